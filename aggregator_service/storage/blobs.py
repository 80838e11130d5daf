"""Content-addressed blob store: `blobs/sha256/ab/cdef…`, written temp -> fsync -> rename.

Everything the service keeps in bulk (global states, bases, client deltas,
strategy server states) is a safetensors file named by its sha256. Temp files
carry the writer's host and pid so start-up cleans only the leftovers of dead
processes, never those of a live replica sharing the directory.

Directories are created 0700 and files 0600 whatever the umask: the blobs are
the federation's model states and every member's updates.

`BlobStore` is the interface the services use; `open_blob_store` picks the
local directory (the default) or an S3-compatible bucket (`storage/s3.py`).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Protocol

from shared.blobs import fsync_dir, sha256_file

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "BlobStore",
    "LocalBlobStore",
    "open_blob_store",
    "private_dir",
]

DIR_MODE = 0o700
FILE_MODE = 0o600

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# A replica on another host may still be writing its temp files; only old ones are dead.
_FOREIGN_TEMP_MAX_AGE_S = 24 * 3600


class BlobStore(Protocol):
    """Immutable blobs named by their sha256, written through a local temp file."""

    def path(self, digest: str) -> Path:
        """A local file holding the blob, to read or memory-map (the blob must exist)."""
        ...

    def exists(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int: ...

    def new_temp(self) -> Path:
        """A fresh, empty private temp file for the caller to write, then commit."""
        ...

    def commit_temp(self, tmp: Path, digest: str) -> bool:
        """Store the (already verified) temp file as `digest`; False when it already existed."""
        ...

    def put_bytes(self, data: bytes) -> str: ...

    def put_file(self, path: Path) -> str: ...

    def remove(self, digest: str) -> None: ...

    def remove_stale_temps(self) -> int: ...

    def writable(self) -> bool: ...

    def redirect_url(self, digest: str) -> str | None:
        """A short-lived URL clients may fetch the blob from directly, or None."""
        ...


def open_blob_store(data_dir: Path, blob_url: str | None) -> LocalBlobStore:
    """`data_dir/blobs`, or the S3 bucket of `blob_url` (s3://bucket/prefix) with a local cache.

    Raises ValueError with the reason when the URL is malformed or the bucket unusable."""
    if blob_url is None:
        return LocalBlobStore(data_dir / "blobs")
    from aggregator_service.storage.s3 import S3BlobStore  # boto3 is the optional `s3` extra

    return S3BlobStore.open(blob_url, cache_root=data_dir / "blob-cache")


class LocalBlobStore:
    """Blobs under `<root>/sha256/`, temp files under `<root>/tmp/` (same filesystem)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "sha256"
        self.tmp = root / "tmp"
        for directory in (root, self.objects, self.tmp):
            private_dir(directory)
        self._tag = f"{socket.gethostname()}-{os.getpid()}"

    def path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self.objects / digest[:2] / digest[2:]

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def redirect_url(self, digest: str) -> str | None:
        return None

    def new_temp(self) -> Path:
        """A fresh, empty temp file (mode 0600) in the store's filesystem; the caller writes it.

        Created here with O_EXCL, so a file or symlink planted at the name is refused, and
        opening it again with "wb" truncates it but keeps its mode."""
        tmp = self.tmp / f"{self._tag}-{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)
        return tmp

    def commit_temp(self, tmp: Path, digest: str) -> bool:
        """fsync `tmp` and rename it to its digest; False when that blob already existed."""
        return self._place(tmp, digest)

    def _place(self, tmp: Path, digest: str) -> bool:
        dest = LocalBlobStore.path(self, digest)
        if dest.is_file():
            tmp.unlink(missing_ok=True)
            return False
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        private_dir(dest.parent)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return True

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if self.exists(digest):
            return digest
        tmp = self.new_temp()
        try:
            tmp.write_bytes(data)
            self.commit_temp(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def put_file(self, path: Path) -> str:
        """Move a file written in `self.tmp` into the store; returns its digest."""
        digest = sha256_file(path)
        try:
            self.commit_temp(path, digest)
        finally:
            path.unlink(missing_ok=True)
        return digest

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def remove_stale_temps(self) -> int:
        """Delete temp files of dead processes: this host's by pid, other hosts' by age."""
        host = socket.gethostname()
        removed = 0
        for tmp in self.tmp.glob("*.tmp"):
            owner_host, _, rest = tmp.name.rpartition("-")[0].rpartition("-")
            pid = int(rest) if rest.isdigit() else -1
            if owner_host == host:
                keep = pid != os.getpid() and _alive(pid)
            else:
                keep = pid > 0 and time.time() - tmp.stat().st_mtime < _FOREIGN_TEMP_MAX_AGE_S
            if not keep:
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def writable(self) -> bool:
        try:
            self.new_temp().unlink()
            return True
        except OSError:
            return False


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents) and make `path` itself 0700, whatever the umask."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        path.chmod(DIR_MODE)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
