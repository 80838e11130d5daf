"""A client killed with SIGKILL mid-round resumes from its work dir.

Killed after its delta was acknowledged, it does not train that round again;
killed after writing its delta but before the server acknowledged it, it sends
the very same bytes on restart.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.local_federation import (
    ClientProcess,
    ServerProcess,
    register,
    start_client,
    train_args,
)
from shared.blobs import sha256_file
from shared.spec import RoundsSpec, load_spec
from tests.images import write_image_folder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _federation(server: ServerProcess, quorum: int, epochs: int) -> tuple[str, list[str]]:
    spec = load_spec(EXAMPLES / "tiny-vit-lora.yaml")
    lt = spec.local_training.model_copy(update={"epochs": epochs, "batch_size": 8})
    rounds = RoundsSpec(total=1, quorum=quorum, min_updates=quorum, deadline_s=600)
    spec = spec.model_copy(update={"rounds": rounds, "local_training": lt})
    info = server.admin().create_federation(spec)
    return info.id, spec.task.classes


class Org:
    """One registered organisation with its data, credentials and work dir."""

    def __init__(self, server: ServerProcess, fid: str, root: Path, classes: list[str], n: int):
        self.server, self.root = server, root
        self.creds = root / "credentials.json"
        token = server.admin().create_enrollment_token(fid).token
        register(server, token, root.name, self.creds)
        self.client_id = json.loads(self.creds.read_text())["client_id"]
        self.data = write_image_folder(root / "data", classes, n, mean=lambda c, _i: 20 * c, std=30)
        self.work = root / "work"
        self.runs = 0

    def train(self) -> ClientProcess:
        self.runs += 1
        args = train_args(self.server, self.creds, self.data, self.work)
        return start_client(self.root.name, args, self.root / f"run-{self.runs}.log")

    def journal_status(self, r: int) -> str | None:
        try:
            journal = json.loads((self.work / "journal.json").read_text())
        except (OSError, ValueError):
            return None
        entry = journal["rounds"].get(str(r))
        return entry["status"] if entry else None


def _wait_for(
    what: str, check: Callable[[], bool], proc: ClientProcess, timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.proc.poll() is not None:
            pytest.fail(f"client exited before {what}:\n{proc.output()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{proc.output()[-3000:]}")
        time.sleep(0.02)


def test_client_killed_after_its_upload_does_not_train_that_round_again(server, tmp_path):
    fid, classes = _federation(server, quorum=2, epochs=1)
    a = Org(server, fid, tmp_path / "org-a", classes, 3)
    first = a.train()
    _wait_for("round 1 uploaded", lambda: a.journal_status(1) == "uploaded", first)
    sha = sha256_file(a.work / "round-1.delta.safetensors")
    first.proc.send_signal(signal.SIGKILL)
    first.wait()

    second = a.train()
    _wait_for("the restart to skip round 1", lambda: "uploaded before" in second.output(), second)
    b = Org(server, fid, tmp_path / "org-b", classes, 3)
    other = b.train()

    assert [second.wait(timeout=300), other.wait(timeout=300)] == [0, 0], second.output()
    assert "training" not in second.output()
    (record,) = server.admin().list_rounds(fid)
    shas = {p.client_id: p.sha256 for p in record.participants}
    assert shas[a.client_id] == sha == sha256_file(a.work / "round-1.delta.safetensors")


def test_client_killed_before_acknowledgement_resends_the_same_delta(server, tmp_path):
    fid, classes = _federation(server, quorum=1, epochs=3)
    a = Org(server, fid, tmp_path / "org-a", classes, 40)
    first = a.train()
    state_dir = a.work / "state"
    _wait_for("the global state", lambda: state_dir.is_dir() and any(state_dir.iterdir()), first)
    os.kill(server.proc.pid, signal.SIGSTOP)  # the upload will get no answer
    try:
        _wait_for("the delta to be written", lambda: a.journal_status(1) is not None, first)
        assert a.journal_status(1) == "written", "upload was acknowledged before the server froze"
        sha = sha256_file(a.work / "round-1.delta.safetensors")
        first.proc.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)

    second = a.train()

    assert second.wait(timeout=300) == 0, second.output()
    assert "training" not in second.output()  # never trained the round twice
    (record,) = server.admin().list_rounds(fid)
    # the written delta landed exactly once: re-sent by the second run, or, when the whole
    # body already sat in the frozen server's socket buffer, taken in by the server once it
    # resumed (it was complete, so it is accepted) before the second run looked
    assert [(p.client_id, p.sha256) for p in record.participants] == [(a.client_id, sha)]
    if "re-sending the delta written before a restart" in second.output():
        assert a.journal_status(1) == "uploaded"
