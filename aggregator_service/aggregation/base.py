"""The strategy interface and what every strategy shares.

A strategy is a pure function: the current global trainable state, the round's
updates (delta blobs on disk, in client-id order), the spec's aggregation
section and the strategy's stored server state in; the next global state and
the server state to store out. Deltas are read memory-mapped, one tensor at a
time, so memory is O(model) whatever the number of clients.

Determinism: deltas are always visited in client-id order and every per-element
operation runs in a fixed order, so a round aggregates to the same bits however
its updates arrived and however often it is recomputed.
"""

from __future__ import annotations

import math
import mmap
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from shared.blobs import read_header, torch_dtype
from shared.spec import AggregationSpec

__all__ = [
    "DEFAULT_CHUNK_BUDGET",
    "STRATEGIES",
    "AggregationResult",
    "DeltaReader",
    "Strategy",
    "UpdateInput",
    "get_strategy",
    "open_deltas",
    "register_strategy",
]

# Elements held at once (across all deltas) by chunked, coordinate-wise strategies:
# 2**22 float32 = 16 MiB per block (sorting it adds values and int64 indices, so
# about 64 MiB at the peak), whatever the number of clients or the model size.
DEFAULT_CHUNK_BUDGET = 1 << 22
# Weighted sums run over slices of this many elements (4 MiB of float32), all
# deltas per slice, so the accumulator slice stays in cache while the deltas stream.
SUM_BLOCK = 1 << 20


@dataclass(frozen=True)
class UpdateInput:
    """One accepted update: who sent it, where its delta blob lies, its weight basis."""

    client_id: str
    path: Path
    num_examples: int


@dataclass
class AggregationResult:
    state: dict[str, torch.Tensor]
    server_state: dict[str, torch.Tensor] = field(default_factory=dict)


class Strategy(Protocol):
    def __call__(
        self,
        global_state: Mapping[str, torch.Tensor],
        updates: Sequence[UpdateInput],
        spec: AggregationSpec,
        server_state: Mapping[str, torch.Tensor],
    ) -> AggregationResult: ...


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Decorator: make a strategy available under the spec's `aggregation.strategy` name."""

    def deco(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return deco


def get_strategy(name: str) -> Strategy:
    # Importing the package registers every strategy module.
    import aggregator_service.aggregation  # noqa: F401

    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown aggregation strategy {name!r}; known: {sorted(STRATEGIES)}"
        ) from None


class MappedDelta:
    """One delta blob, memory-mapped: tensors are views of the page cache, never copies.

    The header is checked by FedTune's own validator. The mapping is private
    (copy-on-write): writing into a tensor handed out here would not touch the
    file but would turn shared page cache into private memory and be seen by the
    next read of that tensor, so nothing in aggregation writes into one.
    """

    def __init__(self, path: Path):
        if sys.byteorder != "little":  # pragma: no cover - safetensors data is little-endian
            raise RuntimeError("aggregation maps safetensors in place: needs a little-endian host")
        header = read_header(path)
        self.entries = header.tensors
        self._base = 8 + header.header_size
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get_tensor(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        dtype = torch_dtype(entry.dtype)
        itemsize = torch.empty((), dtype=dtype).element_size()
        count = (entry.end - entry.start) // itemsize
        offset = self._base + entry.start
        if count == 0:
            return torch.empty(entry.shape, dtype=dtype)
        if offset % itemsize:  # a writer without safetensors' header padding: copy it aligned
            raw = bytearray(self._map[offset : offset + count * itemsize])
            return torch.frombuffer(raw, dtype=dtype).view(entry.shape)
        return torch.frombuffer(self._map, dtype=dtype, count=count, offset=offset).view(
            entry.shape
        )


class DeltaReader:
    """The round's deltas, open memory-mapped, read one tensor at a time in client-id order.

    `scales[i]` is the per-update clip factor (1.0 when `clip_norm` is unset);
    `weights[i]` are the normalised aggregation weights (sum to 1). Tensors it
    hands out may be views of the mapping (see `MappedDelta`): treat them as
    read-only.
    """

    def __init__(
        self, blobs: Sequence[MappedDelta], updates: Sequence[UpdateInput], spec: AggregationSpec
    ):
        self._blobs = list(blobs)
        self.updates = list(updates)
        self.weights = _weights(self.updates, spec)
        self.scales = [1.0] * len(self._blobs)
        if spec.clip_norm is not None:
            clip = spec.clip_norm
            self.scales = [clip / n if n > clip else 1.0 for n in self.norms()]

    def __len__(self) -> int:
        return len(self._blobs)

    def raw(self, i: int, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
        """Delta `i`'s tensor `name` as stored (a read-only view of the mapping; no clip)."""
        try:
            t = self._blobs[i].get_tensor(name)
        except KeyError:
            raise ValueError(
                f"update of client {self.updates[i].client_id} has no tensor {name!r}"
            ) from None
        if like is not None and t.shape != like.shape:
            raise ValueError(
                f"update of client {self.updates[i].client_id}: tensor {name!r} has shape "
                f"{list(t.shape)}, the global state has {list(like.shape)}"
            )
        return t

    def tensor(self, i: int, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
        """Delta `i`'s tensor `name` as float32 with its clip factor applied.

        A fresh tensor when a conversion or clip was needed, else the mapped view:
        treat it as read-only either way.
        """
        t = self.raw(i, name, like).to(torch.float32)
        return t * self.scales[i] if self.scales[i] != 1.0 else t

    def norms(self) -> list[float]:
        """L2 norm of each whole delta, accumulated in float64 tensor by tensor."""
        out = []
        for blob in self._blobs:
            sq = 0.0
            for name in blob.names():
                t = blob.get_tensor(name).to(torch.float64).reshape(-1)
                sq += float(torch.dot(t, t))
            out.append(math.sqrt(sq))
        return out

    def weighted_mean(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Σ_k w_k s_k Δ_k for tensor `name` as a new float32 tensor.

        Every element is summed in client-id order (one fused multiply-add per
        delta, weight and clip factor folded into one coefficient), straight from
        the mapping. The sum runs block by block so the accumulator block stays in
        cache; per element the order of operations is the same whatever the block.
        """
        flats = [self.raw(i, name, like).reshape(-1) for i in range(len(self._blobs))]
        coefs = [w * s for w, s in zip(self.weights, self.scales, strict=True)]
        acc = torch.empty(like.numel(), dtype=torch.float32)
        for start in range(0, acc.numel(), SUM_BLOCK):
            stop = min(acc.numel(), start + SUM_BLOCK)
            block = acc[start:stop]
            for i, flat in enumerate(flats):
                src = flat[start:stop]
                if src.dtype != torch.float32:
                    src = src.to(torch.float32)
                if i == 0:
                    torch.mul(src, coefs[0], out=block)
                else:
                    block.add_(src, alpha=coefs[i])
        return acc.view(like.shape)

    def chunks(
        self, name: str, like: torch.Tensor, budget: int = DEFAULT_CHUNK_BUDGET
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Tensor `name`, flattened, in slices: (where, block[n_updates, c]) float32, clipped.

        Each block stacks at most `budget // n` elements of every delta, so
        coordinate-wise statistics (median, trimmed mean) hold `budget` elements
        at a time whatever the model size. The block buffer is reused between
        chunks: consume it before asking for the next one.
        """
        n = len(self._blobs)
        numel = like.numel()
        width = max(1, min(numel, budget // n))
        flats = [self.raw(i, name, like).reshape(-1) for i in range(n)]
        buf = torch.empty((n, width), dtype=torch.float32)
        for start in range(0, numel, width):
            stop = min(numel, start + width)
            block = buf[:, : stop - start]
            for i, flat in enumerate(flats):
                block[i].copy_(flat[start:stop])
                if self.scales[i] != 1.0:
                    block[i].mul_(self.scales[i])
            yield slice(start, stop), block


def _weights(updates: Sequence[UpdateInput], spec: AggregationSpec) -> list[float]:
    if spec.weighting == "uniform":
        return [1.0 / len(updates)] * len(updates)
    total = sum(u.num_examples for u in updates)
    if total <= 0 or any(u.num_examples < 0 for u in updates):
        raise ValueError("weighting by num_examples needs positive example counts")
    return [u.num_examples / total for u in updates]


@contextmanager
def open_deltas(updates: Sequence[UpdateInput], spec: AggregationSpec) -> Iterator[DeltaReader]:
    """Open every update's delta blob memory-mapped, sorted by client id.

    The mappings are released when the last tensor viewing them is freed.
    """
    if not updates:
        raise ValueError("cannot aggregate a round with no updates")
    ordered = sorted(updates, key=lambda u: u.client_id)
    dupes = sorted(cid for cid, k in Counter(u.client_id for u in ordered).items() if k > 1)
    if dupes:
        raise ValueError(f"more than one update from client(s) {', '.join(dupes)} in one round")
    yield DeltaReader([MappedDelta(Path(u.path)) for u in ordered], ordered, spec)
