"""The S3 blob store against a real S3-compatible server (moto's `moto_server` process).

Commits land in the bucket under `prefix/sha256/ab/cdef…`; a second store with an
empty cache downloads on a miss and checks the sha256; a tampered object is
refused; a failed multipart upload leaves nothing visible; start-up refuses a
malformed URL, a missing bucket and an unreachable endpoint with the reason.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aggregator_service.storage import open_blob_store
from lab.local_federation import free_port
from tests.s3server import S3Server, bucket_server

BUCKET = "fedtune-blobs"
URL = f"s3://{BUCKET}/fed/a"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with bucket_server(tmp_path_factory.mktemp("moto") / "moto.log", BUCKET) as server:
        yield server


@pytest.fixture
def aws(moto: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    return moto


def _store(tmp_path: Path, name: str = "a", url: str = URL):
    from aggregator_service.storage.s3 import S3BlobStore

    store = open_blob_store(tmp_path / name, url)
    assert isinstance(store, S3BlobStore)
    return store


def test_commit_uploads_under_the_digest_and_keeps_a_cached_copy(aws, tmp_path):
    store = _store(tmp_path)
    data = os.urandom(3000)
    digest = hashlib.sha256(data).hexdigest()

    assert store.put_bytes(data) == digest
    assert store.put_bytes(data) == digest  # idempotent

    key = f"fed/a/sha256/{digest[:2]}/{digest[2:]}"
    assert aws.keys(BUCKET, "fed/a/sha256/") == [key]
    assert aws.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
    assert store.path(digest) == tmp_path / "a" / "blob-cache" / "sha256" / digest[:2] / digest[2:]
    assert store.path(digest).read_bytes() == data
    assert store.exists(digest) and store.size(digest) == len(data)
    assert list(store.tmp.iterdir()) == []


def test_commit_temp_says_whether_the_bucket_already_held_the_blob(aws, tmp_path):
    store = _store(tmp_path)
    data = b"update" * 500
    digest = hashlib.sha256(data).hexdigest()
    tmp = store.new_temp()
    tmp.write_bytes(data)
    assert store.commit_temp(tmp, digest) is True

    other = _store(tmp_path, "b")  # another replica: empty cache, same bucket
    tmp = other.new_temp()
    tmp.write_bytes(data)
    assert other.commit_temp(tmp, digest) is False
    assert not tmp.exists() and other.path(digest).read_bytes() == data


def test_a_cache_miss_downloads_and_verifies(aws, tmp_path):
    data = os.urandom(5000)
    digest = _store(tmp_path).put_bytes(data)
    replica = _store(tmp_path, "replica")
    cached = tmp_path / "replica" / "blob-cache" / "sha256" / digest[:2] / digest[2:]
    assert not cached.exists()

    assert replica.exists(digest) and replica.size(digest) == len(data)
    assert replica.path(digest) == cached
    assert cached.read_bytes() == data
    assert cached.stat().st_mode & 0o777 == 0o600
    assert list(replica.tmp.iterdir()) == []


def test_a_tampered_object_is_refused_and_never_cached(aws, tmp_path):
    from aggregator_service.storage.s3 import BlobIntegrityError

    digest = hashlib.sha256(b"the real bytes").hexdigest()
    key = f"fed/a/sha256/{digest[:2]}/{digest[2:]}"
    aws.client().put_object(Bucket=BUCKET, Key=key, Body=b"forged bytes")
    store = _store(tmp_path)

    with pytest.raises(BlobIntegrityError, match="hashes to"):
        store.path(digest)

    assert not (tmp_path / "a" / "blob-cache" / "sha256" / digest[:2] / digest[2:]).exists()
    assert list(store.tmp.iterdir()) == []


def test_a_missing_blob_is_file_not_found(aws, tmp_path):
    store = _store(tmp_path)
    digest = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(digest)
    with pytest.raises(FileNotFoundError):
        store.path(digest)
    with pytest.raises(ValueError, match="sha256"):
        store.path("../../etc/passwd")


def test_remove_deletes_from_the_bucket_and_the_cache(aws, tmp_path):
    store = _store(tmp_path)
    digest = store.put_bytes(b"to be removed")
    cached = store.path(digest)

    store.remove(digest)

    assert not cached.exists()
    assert not store.exists(digest)
    assert f"fed/a/sha256/{digest[:2]}/{digest[2:]}" not in aws.keys(BUCKET)


def test_a_failed_multipart_upload_leaves_nothing_visible(aws, tmp_path):
    from boto3.s3.transfer import TransferConfig

    store = _store(tmp_path)
    mib = 1024 * 1024
    store._transfer = TransferConfig(
        multipart_threshold=5 * mib, multipart_chunksize=5 * mib, max_concurrency=1
    )
    data = os.urandom(11 * mib)  # three parts
    digest = hashlib.sha256(data).hexdigest()
    parts: list[int] = []

    def fail_second_part(params, **_kwargs):
        parts.append(params["PartNumber"])
        if len(parts) == 2:
            raise ConnectionResetError("injected: the connection dropped mid-upload")

    events = store._s3.meta.events
    events.register("before-parameter-build.s3.UploadPart", fail_second_part)
    tmp = store.new_temp()
    tmp.write_bytes(data)
    with pytest.raises(Exception, match="injected"):
        store.commit_temp(tmp, digest)
    events.unregister("before-parameter-build.s3.UploadPart", fail_second_part)

    assert len(parts) >= 2  # it failed part-way through a multipart upload
    assert not store.exists(digest)
    assert not (tmp_path / "a" / "blob-cache" / "sha256" / digest[:2] / digest[2:]).exists()
    uploads = aws.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert uploads == []  # aborted, not left half-done

    assert store.commit_temp(tmp, digest) is True  # the retry goes through, in parts
    assert _store(tmp_path, "check").path(digest).read_bytes() == data


def test_a_presigned_url_serves_the_object_without_credentials(aws, tmp_path):
    store = _store(tmp_path)
    data = b"global state" * 100
    digest = store.put_bytes(data)

    url = store.redirect_url(digest)

    assert url.startswith(aws.url + f"/{BUCKET}/fed/a/sha256/")
    r = httpx.get(url)
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == digest


def test_writable_probes_the_bucket(aws, tmp_path):
    aws.create_bucket("short-lived")
    store = _store(tmp_path, url="s3://short-lived")
    assert store.writable()
    assert aws.keys("short-lived") == []  # the probe object is deleted again

    aws.client().delete_bucket(Bucket="short-lived")
    assert not store.writable()


@pytest.mark.parametrize(
    "url",
    ["s3:/nobucket", "s3://Upper_Case/x", "http://bucket/x", "s3://bucket/a//b", "s3://b/../x"],
)
def test_a_malformed_url_is_refused(aws, tmp_path, url):
    with pytest.raises(ValueError, match="blob URL"):
        open_blob_store(tmp_path, url)


def test_a_missing_bucket_is_refused_at_start_up(aws, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        open_blob_store(tmp_path, "s3://no-such-bucket/prefix")


def test_an_unreachable_endpoint_is_refused_at_start_up(aws, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ValueError, match="cannot reach the S3 endpoint"):
        open_blob_store(tmp_path, URL)


def test_the_local_store_stays_the_default(tmp_path):
    from aggregator_service.storage import LocalBlobStore

    store = open_blob_store(tmp_path, None)
    assert type(store) is LocalBlobStore and store.root == tmp_path / "blobs"
    assert store.redirect_url(store.put_bytes(b"x")) is None
