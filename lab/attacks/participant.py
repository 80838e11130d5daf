"""An organisation of a lab federation: the SDK's `Participant`, honest or attacking.

It trains exactly as `fedtune-client train` does (the SDK's own loop, over
HTTP). An attacker then rewrites the delta it wrote for the round with its
attack's transform, keeping the delta's metadata (round, base version, example
count, metrics), and records the new file's digest in the work dir's journal;
the SDK uploads that file, and re-sends the same bytes on a retry like any
other. Training takes its turn under `training_turn` like the study's
organisations, and the attack's noise is seeded by (seed, organisation,
round), so a run repeats.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from client_sdk._client import FedTuneClient
from client_sdk.participate import ParticipateOptions
from client_sdk.workdir import JournalEntry
from lab.attacks.transforms import Attack, l2_norm
from lab.study.federated import StudyParticipant
from shared.api import RoundStatus
from shared.blobs import Blob, atomic_save_state, read_state, sha256_file

__all__ = ["HarnessParticipant", "poison_file"]


def poison_file(path: Path, attack: Attack, generator: torch.Generator) -> str:
    """Replace the delta file at `path` by `attack`'s poison, metadata kept; its new sha256."""
    blob = Blob.open(path)
    metadata = dict(blob.metadata)
    honest = blob.load()
    atomic_save_state(path, attack.apply(honest, generator), metadata)
    return sha256_file(path)


class HarnessParticipant(StudyParticipant):
    """One organisation; `attack` None trains honestly. `org` is its index in the federation."""

    def __init__(
        self,
        client: FedTuneClient,
        client_id: str,
        options: ParticipateOptions,
        org: int,
        attack: Attack | None = None,
    ) -> None:
        super().__init__(client, client_id, options, org)
        self.attack = attack
        self.sent_norms: dict[int, float] = {}
        """Round -> L2 norm of the delta this organisation wrote to send (poisoned or not)."""

    def _train(self, status: RoundStatus) -> JournalEntry:
        entry = super()._train(status)  # in its seeded training turn
        path = self.workdir.delta_path(status.round)
        if self.attack is None:
            self.sent_norms[status.round] = l2_norm(read_state(path))
            return entry
        gen = torch.Generator().manual_seed(
            self.info.spec.seed * 1_000_003 + self.org * 10_007 + status.round
        )
        digest = poison_file(path, self.attack, gen)
        self.sent_norms[status.round] = l2_norm(read_state(path))
        poisoned = replace(entry, sha256=digest)
        self.workdir.record(status.round, poisoned)
        return poisoned
