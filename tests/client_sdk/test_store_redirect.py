"""A download answered with a redirect to the blob store (a presigned URL).

The client follows exactly one hop, only to http(s), sends the store neither its
API key nor its idempotency key, and checks the bytes against the server's ETag.
"""

from __future__ import annotations

import hashlib

import pytest

from client_sdk import APIConnectionError, APIResponseValidationError, FedTuneClient

BLOB = b"global state bytes " * 4000
SHA = hashlib.sha256(BLOB).hexdigest()
STORE_PATH = "/bucket/fed/sha256/ab/cd?X-Amz-Signature=abc"


def _redirect(scripted, location: str | None = None, etag: str | None = SHA) -> None:
    headers = {"Location": location or f"{scripted.url}{STORE_PATH}", "X-FedTune-Round": "2"}
    if etag:
        headers["ETag"] = f'"{etag}"'
    scripted.then(307, headers=headers)


def test_a_redirect_is_followed_to_the_store_without_credentials(scripted, tmp_path):
    _redirect(scripted)
    scripted.then(200, body=BLOB)
    client = FedTuneClient(scripted.url, api_key="ftk_secret", allow_http=True)

    result = client.download_state("fed_1", tmp_path / "s.safetensors")

    assert (result.sha256, result.size, result.not_modified) == (SHA, len(BLOB), False)
    assert result.headers["x-fedtune-round"] == "2"
    assert (tmp_path / "s.safetensors").read_bytes() == BLOB
    api, store = scripted.seen
    assert api.headers["Authorization"] == "Bearer ftk_secret"
    assert store.path == STORE_PATH
    assert not {"authorization", "idempotency-key"} & {k.lower() for k in store.headers}


def test_bytes_from_the_store_that_do_not_match_the_etag_are_refused(scripted, tmp_path):
    _redirect(scripted)
    scripted.then(200, body=b"tampered" + BLOB)
    client = FedTuneClient(scripted.url, allow_http=True)

    with pytest.raises(APIResponseValidationError, match="corrupted transfer"):
        client.download_state("fed_1", tmp_path / "s.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_only_one_redirect_is_followed(scripted, tmp_path):
    _redirect(scripted)
    scripted.then(302, headers={"Location": f"{scripted.url}/elsewhere"})
    client = FedTuneClient(scripted.url, allow_http=True)

    with pytest.raises(APIConnectionError, match="one redirect is followed"):
        client.download_state("fed_1", tmp_path / "s.safetensors")
    assert len(scripted.seen) == 2


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "ftp://store/blob", "gopher://store:70/blob"]
)
def test_a_redirect_to_anything_but_http_is_refused(scripted, tmp_path, location):
    _redirect(scripted, location)
    client = FedTuneClient(scripted.url, allow_http=True)

    with pytest.raises(APIResponseValidationError, match="only an http"):
        client.download_state("fed_1", tmp_path / "s.safetensors")
    assert len(scripted.seen) == 1


def test_a_redirect_without_an_etag_is_refused(scripted, tmp_path):
    _redirect(scripted, etag=None)
    client = FedTuneClient(scripted.url, allow_http=True)

    with pytest.raises(APIResponseValidationError, match="without an ETag"):
        client.download_state("fed_1", tmp_path / "s.safetensors")


def test_a_store_failure_retries_with_a_fresh_redirect(scripted, tmp_path):
    _redirect(scripted)
    scripted.then(503, body=b"<Error>SlowDown</Error>")
    _redirect(scripted)
    scripted.then(200, body=BLOB)
    client = FedTuneClient(scripted.url, allow_http=True)
    client._sleep = lambda _s: None

    result = client.download_state("fed_1", tmp_path / "s.safetensors")

    assert result.sha256 == SHA and len(scripted.seen) == 4
