"""The data directory is private: directories 0700 and files 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator_service.storage import LocalBlobStore
from aggregator_service.storage.database import Database

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX modes")


@pytest.fixture(autouse=True)
def _permissive_umask() -> Iterator[None]:
    old = os.umask(0o000)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_blob_store_directories_are_0700(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    digest = store.put_bytes(b"x")

    for d in (store.root, store.objects, store.tmp, store.path(digest).parent):
        assert _mode(d) == 0o700, d


def test_blobs_are_0600(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")

    digest = store.put_bytes(b"state")

    assert _mode(store.path(digest)) == 0o600


def test_temp_files_are_created_0600_and_stay_so_when_the_caller_writes_them(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    tmp = store.new_temp()
    assert _mode(tmp) == 0o600

    with open(tmp, "wb") as f:
        f.write(b"upload")
    digest = store.put_file(tmp)

    assert _mode(store.path(digest)) == 0o600


def test_an_existing_blob_directory_is_tightened_to_0700(tmp_path):
    (tmp_path / "blobs").mkdir(mode=0o755)
    os.chmod(tmp_path / "blobs", 0o755)

    LocalBlobStore(tmp_path / "blobs")

    assert _mode(tmp_path / "blobs") == 0o700


def test_sqlite_database_and_its_wal_are_0600_in_a_new_0700_directory(tmp_path):
    path = tmp_path / "data" / "fedtune.db"
    db = Database(f"sqlite:///{path}")
    try:
        db.create_schema()
        with db.write() as conn:
            conn.exec_driver_sql("CREATE TABLE probe (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO probe VALUES (1)")

        assert _mode(path.parent) == 0o700
        files = [p for p in path.parent.iterdir() if p.name.startswith("fedtune.db")]
        assert path in files
        for p in files:
            assert _mode(p) == 0o600, p
    finally:
        db.dispose()


def test_an_existing_database_file_is_tightened_to_0600(tmp_path):
    path = tmp_path / "fedtune.db"
    path.touch()
    os.chmod(path, 0o644)

    Database(f"sqlite:///{path}").dispose()

    assert _mode(path) == 0o600
