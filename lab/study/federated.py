"""A federated cell: a real federation on the study's `fedtune-server serve`, over HTTP.

The federation is created from the cell's spec through the REST API, each
organisation is enrolled (enrollment token, registration) and trains its own
Dirichlet share with the SDK's `Participant`, the exact loop `fedtune-client
train` runs. The organisations are threads of this process rather than
`fedtune-client` processes: a client process spends several seconds importing
torch and building its model, which would dominate a cell of a few seconds;
everything after start-up (long polls, state downloads, delta uploads,
aggregation in the server) is the same. Held-out accuracy per round is then
scored by an outside observer on each global state (`lab.evaluation`).

Shares are given to organisations in client-id order: the server sums deltas
in that order, so share k is always the k-th term and the aggregate is
bit-identical from run to run.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from client_sdk._client import FedTuneClient
from client_sdk._exceptions import FedTuneError
from client_sdk.participate import Participant, ParticipateOptions
from client_sdk.workdir import JournalEntry
from lab.evaluation import round_accuracies
from lab.local_federation import ServerProcess
from lab.study.cells import Cell
from lab.study.determinism import training_turn
from lab.study.results import curve_columns
from lab.study.shares import StudyData
from shared.api import RoundRecord, RoundStatus

__all__ = ["CellError", "StudyParticipant", "enroll", "run_federated", "run_threads"]

POLL_S = 0.5


class CellError(RuntimeError):
    """A cell that could not finish; the message says which organisation and why."""


class StudyParticipant(Participant):
    """`Participant` whose training takes its turn with a seeded RNG (see `determinism`).

    Everything else (polling, downloads, training, uploads) is the SDK's own code;
    progress bars are off, as organisations run side by side in one terminal.
    """

    def __init__(self, client: FedTuneClient, client_id: str, opts: ParticipateOptions, org: int):
        super().__init__(client, client_id, replace(opts, progress=False))
        self.org = org

    def _train(self, status: RoundStatus) -> JournalEntry:
        with training_turn(self.info.spec.seed, self.org, status.round):
            return super()._train(status)


def enroll(
    admin: FedTuneClient, server: ServerProcess, fid: str, names: Sequence[str]
) -> list[tuple[str, str, FedTuneClient]]:
    """Register one organisation per name; (name, client id, client) for each, in order."""
    enrolled = []
    for name in names:
        token = admin.create_enrollment_token(fid, uses=1)
        r = admin.register_client(token.token, name)
        enrolled.append((name, r.client_id, server.client(r.api_key)))
    return enrolled


def run_threads(
    participants: Sequence[StudyParticipant],
    admin: FedTuneClient,
    error: type[Exception] = CellError,
) -> None:
    """Run every participant to completion; on a failure revoke the rest and raise `error`."""
    errors: list[tuple[int, BaseException]] = []

    def target(p: StudyParticipant) -> None:
        try:
            p.run()
        except BaseException as exc:
            errors.append((p.org, exc))

    threads = [threading.Thread(target=target, args=(p,), daemon=True) for p in participants]
    for t in threads:
        t.start()
    while not errors:
        alive = [t for t in threads if t.is_alive()]
        if not alive:
            break
        alive[0].join(POLL_S)
    if errors:
        for p in participants:
            with contextlib.suppress(FedTuneError):  # already gone: its thread ends anyway
                admin.revoke_client(p.workdir.client_id)
        org, exc = errors[0]
        raise error(f"organisation {org + 1} failed: {type(exc).__name__}: {exc}")


def _bytes(history: list[RoundRecord]) -> dict[str, Any]:
    up = [rec.bytes_in for rec in history]
    down = [rec.bytes_out for rec in history]
    steady = down[1:] or down
    return {
        "bytes_up_per_round": sum(up) / max(len(up), 1),
        "bytes_down_per_round": sum(steady) / max(len(steady), 1),
        "round_bytes_up": up,
        "round_bytes_down": down,
    }


def run_federated(
    cell: Cell, server: ServerProcess, data: StudyData, work: Path, device: str
) -> dict[str, Any]:
    """Run one federated cell to completion; returns its results row (metric columns)."""
    started = time.perf_counter()
    folders = data.org_folders(cell.setting)
    test = data.test(cell.setting)
    cell_dir = work / cell.id
    shutil.rmtree(cell_dir, ignore_errors=True)  # a run killed mid-cell left an old federation
    with server.admin() as admin:
        info = admin.create_federation(cell.spec(data.classes))
        names = [f"org-{k + 1}" for k in range(len(folders))]
        clients = sorted(enroll(admin, server, info.id, names), key=lambda e: e[1])  # by id
        try:
            participants = []
            for k, ((_, client_id, client), folder) in enumerate(
                zip(clients, folders, strict=True)
            ):
                opts = ParticipateOptions(
                    info.id, folder, cell_dir / f"org-{k + 1}", device, organisation=f"org-{k + 1}"
                )
                participants.append(StudyParticipant(client, client_id, opts, k))
            run_threads(participants, admin)
        finally:
            for _, _, client in clients:
                client.close()
        history = admin.list_rounds(info.id)
        curve = round_accuracies(admin, info, test, len(history), torch.device(device))
    shutil.rmtree(cell_dir, ignore_errors=True)
    return {
        **curve_columns(curve),
        **_bytes(history),
        "org_examples": [len(p.trainer.train_set) + len(p.trainer.val_set) for p in participants],
        "trainable_params": info.trainable_params,
        "total_params": info.total_params,
        "test_examples": len(test),
        "wall_s": round(time.perf_counter() - started, 2),
    }
