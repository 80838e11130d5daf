"""Blobs in an S3-compatible bucket, with a local content-addressed cache for memory-maps.

`s3://bucket/prefix` keeps each blob at `prefix/sha256/ab/cdef…`, the same layout
as the local store, so every replica sharing the database finds every blob.
A commit uploads the caller's verified temp file (multipart above a threshold,
streamed from the file; a failed multipart upload is aborted) and only then
counts as stored: S3 makes an object visible whole or not at all. Reads go
through the cache under the data dir: a miss downloads the object, checks its
sha256 and renames it into place, so `path()` still names a local file and a
tampered object is never used. Blobs are immutable and named by their digest,
so the cache needs no invalidation.

The client follows the standard AWS environment: `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`), `AWS_REGION`/`AWS_DEFAULT_REGION`, the usual credential
chain, and `AWS_S3_ADDRESSING_STYLE` (`path`, `virtual`, `auto`; default `path`
when an endpoint URL is set, as S3-compatible servers expect).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from aggregator_service.storage.blobs import LocalBlobStore

__all__ = ["PRESIGN_EXPIRES_S", "BlobIntegrityError", "S3BlobStore", "parse_blob_url"]

log = logging.getLogger("aggregator_service")

# A presigned download URL is checked when the transfer starts, so minutes are plenty.
PRESIGN_EXPIRES_S = 300
_MULTIPART_THRESHOLD = 16 * 1024 * 1024
_READ_CHUNK = 1024 * 1024
# Multipart uploads left by a crashed process cost storage until aborted.
_STALE_UPLOAD_AGE = timedelta(hours=24)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9._/-]*$")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class BlobIntegrityError(OSError):
    """An object in the bucket does not hash to the digest it is stored under."""


def parse_blob_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in '/' or empty) from `s3://bucket/prefix`."""
    parts = urlsplit(url)
    bucket = parts.netloc
    prefix = parts.path.strip("/")
    if parts.scheme != "s3" or not _BUCKET.match(bucket) or parts.query or parts.fragment:
        raise ValueError(f"blob URL {url!r} must look like s3://bucket/prefix")
    if not _PREFIX.match(prefix) or any(s in ("", ".", "..") for s in prefix.split("/") if prefix):
        raise ValueError(
            f"blob URL {url!r}: the prefix may hold letters, digits and . _ - / "
            "in non-empty segments"
        )
    return bucket, f"{prefix}/" if prefix else ""


def _addressing_style() -> str | None:
    style = os.environ.get("AWS_S3_ADDRESSING_STYLE", "").strip().lower()
    if style:
        if style not in ("path", "virtual", "auto"):
            raise ValueError(f"AWS_S3_ADDRESSING_STYLE={style!r}: use path, virtual or auto")
        return style
    if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        return "path"
    return None


def _client(*, probe: bool = False) -> Any:
    """An S3 client from the AWS environment; `probe` = short timeouts and no retries."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ValueError(
            "an s3:// blob URL needs boto3: install the `s3` extra (pip install 'fedtune[s3]')"
        ) from None
    style = _addressing_style()
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": style} if style else {},
        connect_timeout=2 if probe else 10,
        read_timeout=3 if probe else 60,
        retries={"mode": "standard", "max_attempts": 1 if probe else 5},
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    return boto3.session.Session().client("s3", region_name=region, config=config)


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class S3BlobStore(LocalBlobStore):
    """The bucket holds every blob durably; the `LocalBlobStore` this extends is its cache.

    Temp files are written in the cache, so the spooling and validation of uploads
    stay local; `commit_temp` uploads before it moves the file into the cache."""

    def __init__(self, bucket: str, prefix: str, cache_root: Path) -> None:
        super().__init__(cache_root)
        self.bucket, self.prefix = bucket, prefix
        self._s3 = _client()
        self._probe = _client(probe=True)
        from boto3.s3.transfer import TransferConfig

        self._transfer = TransferConfig(
            multipart_threshold=_MULTIPART_THRESHOLD,
            multipart_chunksize=_MULTIPART_THRESHOLD,
            max_concurrency=4,
        )
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @classmethod
    def open(cls, blob_url: str, *, cache_root: Path) -> Self:
        """The store for `blob_url`, after checking that its bucket answers."""
        bucket, prefix = parse_blob_url(blob_url)
        store = cls(bucket, prefix, cache_root)
        store._check_bucket(blob_url)
        return store

    def _check_bucket(self, blob_url: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise ValueError(
                f"{blob_url}: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the host a role)"
            ) from None
        except ClientError as exc:
            code = _code(exc)
            if code in ("404", "NoSuchBucket"):
                reason = "the bucket does not exist"
            elif code in ("403", "AccessDenied"):
                reason = "access denied (check the credentials and the bucket policy)"
            else:
                reason = str(exc)
            raise ValueError(f"{blob_url}: {reason}") from None
        except BotoCoreError as exc:
            endpoint = self._s3.meta.endpoint_url
            raise ValueError(
                f"{blob_url}: cannot reach the S3 endpoint {endpoint}: {exc}"
            ) from None

    def key(self, digest: str) -> str:
        LocalBlobStore.path(self, digest)  # validates the digest
        return f"{self.prefix}sha256/{digest[:2]}/{digest[2:]}"

    # -- reads ----------------------------------------------------------------

    def path(self, digest: str) -> Path:
        """The cached file, downloaded and verified first when missing; FileNotFoundError when
        the bucket has no such object, BlobIntegrityError when it does not hash to `digest`."""
        local = LocalBlobStore.path(self, digest)
        if not local.is_file():
            with self._fetch_lock(digest):
                if not local.is_file():
                    self._fetch(digest)
            with self._locks_guard:
                self._fetch_locks.pop(digest, None)
        return local

    def exists(self, digest: str) -> bool:
        return LocalBlobStore.path(self, digest).is_file() or self._head(digest) is not None

    def size(self, digest: str) -> int:
        local = LocalBlobStore.path(self, digest)
        if local.is_file():
            return local.stat().st_size
        head = self._head(digest)
        if head is None:
            raise FileNotFoundError(f"no blob {digest} in s3://{self.bucket}/{self.prefix}")
        return int(head["ContentLength"])

    def redirect_url(self, digest: str) -> str:
        """A presigned GET of the object, valid for PRESIGN_EXPIRES_S."""
        params = {"Bucket": self.bucket, "Key": self.key(digest)}
        url: str = self._s3.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=PRESIGN_EXPIRES_S
        )
        return url

    def _head(self, digest: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            head: dict[str, Any] = self._s3.head_object(Bucket=self.bucket, Key=self.key(digest))
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise
        return head

    def _fetch_lock(self, digest: str) -> threading.Lock:
        with self._locks_guard:
            return self._fetch_locks.setdefault(digest, threading.Lock())

    def _fetch(self, digest: str) -> None:
        from botocore.exceptions import ClientError

        key = self.key(digest)
        tmp = self.new_temp()
        try:
            try:
                obj = self._s3.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in _NOT_FOUND:
                    raise FileNotFoundError(f"no blob s3://{self.bucket}/{key}") from None
                raise
            sha = hashlib.sha256()
            with open(tmp, "wb") as f:
                for chunk in obj["Body"].iter_chunks(_READ_CHUNK):
                    f.write(chunk)
                    sha.update(chunk)
            if sha.hexdigest() != digest:
                raise BlobIntegrityError(
                    f"s3://{self.bucket}/{key} hashes to {sha.hexdigest()}: refused"
                )
            self._place(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)

    # -- writes ---------------------------------------------------------------

    def commit_temp(self, tmp: Path, digest: str) -> bool:
        """Upload `tmp` as `digest` unless the bucket has it, then move it into the cache.

        False when the bucket already held the blob; on any failure nothing was stored."""
        created = self._head(digest) is None
        if created:
            self._s3.upload_file(str(tmp), self.bucket, self.key(digest), Config=self._transfer)
        self._place(tmp, digest)
        return created

    def remove(self, digest: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self.key(digest))
        LocalBlobStore.path(self, digest).unlink(missing_ok=True)

    def remove_stale_temps(self) -> int:
        """The cache's dead temp files, and multipart uploads abandoned more than a day ago."""
        from botocore.exceptions import BotoCoreError, ClientError

        removed = super().remove_stale_temps()
        cutoff = datetime.now(UTC) - _STALE_UPLOAD_AGE
        try:
            pages = self._s3.get_paginator("list_multipart_uploads")
            for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < cutoff:
                        self._s3.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed += 1
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not list abandoned multipart uploads: %s", exc)
        return removed

    def writable(self) -> bool:
        """The cache takes a temp file and the bucket a tiny probe object (short timeouts)."""
        from botocore.exceptions import BotoCoreError, ClientError

        if not super().writable():
            return False
        key = f"{self.prefix}probe/{self._tag}-{time.monotonic_ns()}"
        try:
            self._probe.put_object(Bucket=self.bucket, Key=key, Body=b"")
            self._probe.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            log.warning("blob store s3://%s/%s is not writable: %s", self.bucket, self.prefix, exc)
            return False
        return True
