"""A whole federation on a real `fedtune-server serve`, some of its organisations attacking.

Like a study cell (`lab.study.federated`): the federation is created through
the REST API, every organisation is enrolled (token, registration) and runs
the SDK's participate loop in a thread of this process over HTTP; then an
outside observer scores every global state on held-out images
(`lab.evaluation`). Organisation k is registered as `org-<k+1>` (zero-padded,
so that names sort like numbers: the server sums in name order) and trains on
`folders[k]`; `attackers` names which organisations attack, and how.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from client_sdk.participate import ParticipateOptions
from lab.attacks.participant import HarnessParticipant
from lab.attacks.transforms import Attack
from lab.datasets import LabeledImages
from lab.evaluation import round_accuracies
from lab.local_federation import ServerProcess
from lab.study.federated import enroll, run_threads
from shared.api import RoundRecord
from shared.spec import FederationSpec

__all__ = ["PoisonedRun", "PoisonedRunError", "org_name", "run_poisoned"]


class PoisonedRunError(RuntimeError):
    """A run that could not finish; the message says which organisation and why."""


@dataclass(frozen=True)
class PoisonedRun:
    federation_id: str
    accuracy: list[float]
    """Held-out accuracy of the global state after rounds 0 (initial) .. total."""
    history: list[RoundRecord]
    sent_norms: dict[str, list[float]]
    """Organisation name -> L2 norm of what it sent, round by round."""
    attackers: list[str]
    """Names of the organisations that attacked."""


def run_poisoned(
    server: ServerProcess,
    spec: FederationSpec,
    folders: Sequence[Path],
    test: LabeledImages,
    work: Path,
    attackers: Mapping[int, Attack] | None = None,
) -> PoisonedRun:
    """Run `spec` to completion with one organisation per data folder; organisation k
    sends `attackers[k]`'s poison instead of its delta."""
    attackers = attackers or {}
    unknown = sorted(set(attackers) - set(range(len(folders))))
    if unknown:
        raise ValueError(f"attackers: no organisation {unknown} among {len(folders)}")
    with server.admin() as admin:
        info = admin.create_federation(spec)
        n = len(folders)
        clients = enroll(admin, server, info.id, [org_name(k, n) for k in range(n)])
        try:
            participants = [
                HarnessParticipant(
                    client,
                    client_id,
                    ParticipateOptions(info.id, folder, work / name, "cpu", organisation=name),
                    k,
                    attackers.get(k),
                )
                for k, ((name, client_id, client), folder) in enumerate(
                    zip(clients, folders, strict=True)
                )
            ]
            run_threads(participants, admin, PoisonedRunError)
        finally:
            for _, _, client in clients:
                client.close()
        history = admin.list_rounds(info.id)
        accuracy = round_accuracies(admin, info, test, len(history), torch.device("cpu"))
    norms = {
        name: [p.sent_norms[r] for r in sorted(p.sent_norms)]
        for (name, _, _), p in zip(clients, participants, strict=True)
    }
    attacking = [clients[k][0] for k in sorted(attackers)]
    return PoisonedRun(info.id, accuracy, history, norms, attacking)


def org_name(k: int, n: int) -> str:
    """Organisation k's registered name: org-1 .. org-9, or org-01 .. org-10 for ten."""
    return f"org-{k + 1:0{len(str(n))}d}"
