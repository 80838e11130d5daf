"""The content-addressed blob store: layout, idempotent puts, temp clean-up."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys

from aggregator_service.storage import LocalBlobStore


def test_put_bytes_stores_under_its_sha256_once(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    data = b"fedtune" * 100
    digest = hashlib.sha256(data).hexdigest()

    first = store.put_bytes(data)
    again = store.put_bytes(data)

    assert first == again == digest
    assert store.path(digest) == tmp_path / "blobs" / "sha256" / digest[:2] / digest[2:]
    assert store.path(digest).read_bytes() == data
    assert list(store.tmp.iterdir()) == []


def test_startup_cleanup_removes_only_temps_of_dead_processes(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    host = socket.gethostname()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    live_pid = os.getppid()  # the process that started this test run is alive
    (store.tmp / f"{host}-{dead_pid}-aa.tmp").write_bytes(b"x")
    (store.tmp / f"{host}-{live_pid}-bb.tmp").write_bytes(b"x")
    (store.tmp / "garbage.tmp").write_bytes(b"x")
    (store.tmp / "other-host-123-cc.tmp").write_bytes(b"x")  # a live replica elsewhere

    removed = store.remove_stale_temps()

    assert removed == 2
    assert sorted(p.name for p in store.tmp.iterdir()) == sorted(
        [f"{host}-{live_pid}-bb.tmp", "other-host-123-cc.tmp"]
    )
