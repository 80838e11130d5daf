"""A round's updates as strategies see them: `Deltas`, read one tensor at a time.

Strategies never open files. They get a `Deltas`: the round's updates in a
fixed order (their sort keys; the client id unless the caller gives one), each
with its example count and its tensors, handed out one
at a time. `BlobDeltas` is the service's: each accepted update's blob opened
through the codec (`shared.blobs.Blob`), tensors memory-mapped in place, so
reading a round costs page cache, not memory of the process's own.
`MemoryDeltas` holds tensors already in memory, for tests and the study.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import torch

from shared.blobs import Blob

__all__ = ["BlobDeltas", "Deltas", "MemoryDeltas", "UpdateInput"]


class Deltas(Protocol):
    """The round's updates in their fixed order, each read one tensor at a time."""

    @property
    def client_ids(self) -> Sequence[str]: ...

    @property
    def num_examples(self) -> Sequence[int]: ...

    def __len__(self) -> int: ...

    def names(self, i: int) -> list[str]:
        """The tensors update `i` holds, sorted."""
        ...

    def tensor(self, i: int, name: str) -> torch.Tensor:
        """Update `i`'s tensor `name` as stored; read-only (it may view shared memory)."""
        ...


@dataclass(frozen=True)
class UpdateInput:
    """One accepted update as the service stores it: who sent it, its blob, its weight basis."""

    client_id: str
    path: Path
    num_examples: int
    sort_key: str = ""
    """What sums run in order of (then the client id). Floating-point sums depend on their
    order, so the service passes something two identical federations share (the
    organisation's name and the update's digest), which server-assigned client ids are not."""


S = TypeVar("S")


class _Sorted(Generic[S]):
    """Updates sorted by (sort key, client id), the order every sum runs in; one per client."""

    def __init__(self, items: Sequence[tuple[str, str, int, S]]) -> None:
        if not items:
            raise ValueError("cannot aggregate a round with no updates")
        ordered = sorted(items, key=lambda item: (item[0], item[1]))
        counts = Counter(cid for _, cid, _, _ in ordered)
        dupes = sorted(cid for cid, k in counts.items() if k > 1)
        if dupes:
            raise ValueError(f"more than one update from client(s) {', '.join(dupes)} in one round")
        self.client_ids = [cid for _, cid, _, _ in ordered]
        self.num_examples = [n for _, _, n, _ in ordered]
        self._sources = [source for _, _, _, source in ordered]

    def __len__(self) -> int:
        return len(self._sources)


class BlobDeltas(_Sorted[Blob]):
    """Each update's blob on disk, header checked, tensors viewed memory-mapped in place."""

    def __init__(self, updates: Sequence[UpdateInput]) -> None:
        super().__init__(
            [(u.sort_key, u.client_id, u.num_examples, Blob.open(u.path)) for u in updates]
        )

    def names(self, i: int) -> list[str]:
        return self._sources[i].names()

    def tensor(self, i: int, name: str) -> torch.Tensor:
        return self._sources[i].tensor(name)


class MemoryDeltas(_Sorted[Mapping[str, torch.Tensor]]):
    """Updates held in memory, given as `(client_id, tensors, num_examples)`."""

    def __init__(self, updates: Iterable[tuple[str, Mapping[str, torch.Tensor], int]]) -> None:
        super().__init__([("", cid, n, tensors) for cid, tensors, n in updates])

    def names(self, i: int) -> list[str]:
        return sorted(self._sources[i])

    def tensor(self, i: int, name: str) -> torch.Tensor:
        return self._sources[i][name]
