"""The same federation run again ends with the same model, even with a client killed mid-round.

Real processes: one `fedtune-server serve`, two `fedtune-client train` per
federation. Each federation has the same spec (LoRA with dropout, so
augmentation, dropout and shuffling are all in play), the same seed and the
same organisations with the same data; only ids and timings differ. Every
round's resulting global version (a sha256 of its tensors) must be identical.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from lab.local_federation import (
    ClientProcess,
    ServerProcess,
    register,
    start_client,
    train_args,
)
from shared.spec import RoundsSpec, load_spec
from tests.images import write_image_folder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ORGS = ("org-a", "org-b")
ROUNDS = 2
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each organisation's own images (textured, so random crops differ), shared by every run."""
    root = tmp_path_factory.mktemp("data")
    classes = _spec().task.classes
    return {
        org: write_image_folder(root / org, classes, 6, seed=k, mean=lambda c, _i: 20 * c, std=40)
        for k, org in enumerate(ORGS)
    }


def _spec():
    spec = load_spec(EXAMPLES / "tiny-vit-lora.yaml")
    method = spec.method.model_copy(update={"options": {**spec.method.options, "dropout": 0.1}})
    lt = spec.local_training.model_copy(update={"epochs": 2, "batch_size": 8})
    rounds = RoundsSpec(total=ROUNDS, quorum=len(ORGS), min_updates=len(ORGS), deadline_s=600)
    return spec.model_copy(update={"method": method, "rounds": rounds, "local_training": lt})


class Org:
    """One registered organisation of one federation: credentials, work dir, its runs."""

    def __init__(self, server: ServerProcess, fid: str, root: Path, name: str, data: Path):
        self.server, self.root, self.name, self.data = server, root / name, name, data
        self.creds = self.root / "credentials.json"
        token = server.admin().create_enrollment_token(fid).token
        register(server, token, name, self.creds)
        self.work = self.root / "work"
        self.runs: list[ClientProcess] = []

    def train(self) -> ClientProcess:
        args = train_args(self.server, self.creds, self.data, self.work)
        log = self.root / f"run-{len(self.runs) + 1}.log"
        self.runs.append(start_client(self.name, args, log))
        return self.runs[-1]

    def journal_status(self, r: int) -> str | None:
        try:
            journal = json.loads((self.work / "journal.json").read_text())
        except (OSError, ValueError):
            return None
        entry = journal["rounds"].get(str(r))
        return entry["status"] if entry else None


def _run(server: ServerProcess, data: dict[str, Path], root: Path, kill_in: int | None) -> list:
    """Run a fresh federation to the end; returns every round's resulting global version.

    With `kill_in`, the first organisation is SIGKILLed once it has started
    training that round (before its upload) and started again.
    """
    admin = server.admin()
    fid = admin.create_federation(_spec()).id
    orgs = [Org(server, fid, root, name, data[name]) for name in ORGS]
    procs = [org.train() for org in orgs]
    if kill_in is not None:
        victim = orgs[0]
        _wait_for(f"round {kill_in}/{ROUNDS}: training", procs[0])
        procs[0].proc.send_signal(signal.SIGKILL)
        procs[0].wait(timeout=60)
        assert victim.journal_status(kill_in) is None, "killed after its delta was written"
        procs[0] = victim.train()
    for proc in procs:
        assert proc.wait(timeout=TIMEOUT_S) == 0, proc.output()[-3000:]
    if kill_in is not None:
        assert f"round {kill_in}/{ROUNDS}: training" in procs[0].output()
    info = admin.get_federation(fid)
    assert info.status == "completed"
    versions = [record.result_version for record in admin.list_rounds(fid)]
    assert versions[-1] == info.global_version
    return versions


def _wait_for(line: str, proc: ClientProcess) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while line not in proc.output():
        if proc.proc.poll() is not None:
            pytest.fail(f"client exited before {line!r}:\n{proc.output()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {line!r}:\n{proc.output()[-3000:]}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def reference(server, data, tmp_path_factory) -> list:
    return _run(server, data, tmp_path_factory.mktemp("reference"), kill_in=None)


def test_two_identical_federations_end_with_the_same_global_version(
    server, data, reference, tmp_path
):
    assert len(reference) == ROUNDS and len(set(reference)) == ROUNDS

    assert _run(server, data, tmp_path, kill_in=None) == reference


def test_a_client_killed_mid_round_and_restarted_ends_with_the_same_version(
    server, data, reference, tmp_path
):
    assert _run(server, data, tmp_path, kill_in=ROUNDS) == reference
