"""One organisation trains at a time, from torch's RNG seeded by (seed, organisation, round).

The study runs its organisations as threads of one process (see
`federated.py`), and training draws its augmentation (random crops) from
torch's global RNG. Left alone, the threads' draws would interleave in
whatever order the scheduler picks, and a cell would not give the same
accuracy twice. Holding one lock while training and reseeding at its start
makes every organisation's round a function of (seed, organisation, round),
whichever thread runs first. The local-only baseline trains under the same
rule, so a local organisation sees the same crops as its federated twin in
round 1. With two cores, training one organisation at a time costs nothing:
each step already uses both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["training_turn"]

_LOCK = threading.Lock()


@contextmanager
def training_turn(seed: int, org: int, round: int) -> Iterator[None]:
    """Hold the training lock with torch's RNG seeded for this organisation and round."""
    with _LOCK:
        torch.manual_seed(seed * 1_000_003 + org * 10_007 + round)
        yield
