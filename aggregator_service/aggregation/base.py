"""The strategy interface and what every strategy shares.

A strategy is maths: a pure function of the current global trainable state,
the round's `Deltas` (see `deltas`), the spec's aggregation section and the
strategy's stored server state, returning the next global state and the server
state to store. `Contributions` wraps the deltas with their aggregation
weights and clip factors and reads them one tensor at a time, so memory is
O(model) whatever the number of clients.

Determinism: deltas are always visited in client-id order and every per-element
operation runs in a fixed order, so a round aggregates to the same bits however
its updates arrived and however often it is recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from aggregator_service.aggregation.deltas import BlobDeltas, Deltas, UpdateInput
from shared.spec import AggregationSpec
from shared.strategies import STRATEGY_NAMES

__all__ = [
    "STRATEGIES",
    "AggregationResult",
    "Contributions",
    "Strategy",
    "aggregate",
    "apply",
    "delta_norms",
    "get_strategy",
    "register_strategy",
]

# Elements held at once (across all deltas) by chunked, coordinate-wise strategies:
# 2**22 float32 = 16 MiB per block (sorting it adds values and int64 indices, so
# about 64 MiB at the peak), whatever the number of clients or the model size.
CHUNK_BUDGET = 1 << 22
# Weighted sums run over slices of this many elements (4 MiB of float32), all
# deltas per slice, so the accumulator slice stays in cache while the deltas stream.
SUM_BLOCK = 1 << 20

# (tensor name, its global value, the round's weighted mean delta for it)
MeanDelta = tuple[str, torch.Tensor, torch.Tensor]


@dataclass
class AggregationResult:
    state: dict[str, torch.Tensor]
    server_state: dict[str, torch.Tensor] = field(default_factory=dict)


class Strategy(Protocol):
    def __call__(
        self,
        global_state: Mapping[str, torch.Tensor],
        deltas: Deltas,
        spec: AggregationSpec,
        server_state: Mapping[str, torch.Tensor],
    ) -> AggregationResult: ...


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Decorator: implement a strategy that `shared.strategies` declares (name and options)."""
    if name not in STRATEGY_NAMES:
        raise ValueError(f"strategy {name!r} is not declared in shared.strategies")

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


class Contributions:
    """The round's deltas with their weights and clip factors, read one tensor at a time.

    `weights[i]` are the normalised aggregation weights (sum to 1);
    `scales[i]` is update i's clip factor (1.0 when `clip_norm` is unset).
    Tensors it hands out may view shared memory: treat them as read-only.
    """

    def __init__(self, deltas: Deltas, spec: AggregationSpec) -> None:
        self.deltas = deltas
        self.weights = _weights(deltas.num_examples, spec)
        self.scales = [1.0] * len(deltas)
        if spec.clip_norm is not None:
            clip = spec.clip_norm
            self.scales = [clip / n if n > clip else 1.0 for n in self.norms()]

    def __len__(self) -> int:
        return len(self.deltas)

    def raw(self, i: int, name: str, like: torch.Tensor) -> torch.Tensor:
        """Delta `i`'s tensor `name` as stored (no clip), checked against the global shape."""
        who = self.deltas.client_ids[i]
        try:
            t = self.deltas.tensor(i, name)
        except KeyError:
            raise ValueError(f"update of client {who} has no tensor {name!r}") from None
        if t.shape != like.shape:
            raise ValueError(
                f"update of client {who}: tensor {name!r} has shape {list(t.shape)}, "
                f"the global state has {list(like.shape)}"
            )
        return t

    def norms(self) -> list[float]:
        """L2 norm of each whole delta (see `delta_norms`)."""
        return delta_norms(self.deltas)

    def mean(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Σ_k w_k s_k Δ_k for tensor `name` as a new float32 tensor.

        Every element is summed in client-id order (one fused multiply-add per
        delta, weight and clip factor folded into one coefficient), straight from
        the stored bytes. The sum runs block by block so the accumulator block
        stays in cache; per element the order of operations is the same whatever
        the block.
        """
        flats = [self.raw(i, name, like).reshape(-1) for i in range(len(self))]
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

    def means(self, global_state: Mapping[str, torch.Tensor]) -> Iterator[MeanDelta]:
        """(name, old, mean delta) for every tensor of the global state, in name order."""
        for name in sorted(global_state):
            old = global_state[name]
            yield name, old, self.mean(name, old)

    def chunks(self, name: str, like: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """Tensor `name`, flattened, in slices: (where, block[n_updates, c]) float32, clipped.

        Each block stacks at most `CHUNK_BUDGET // n` elements of every delta, so
        coordinate-wise statistics (median, trimmed mean) hold `CHUNK_BUDGET`
        elements at a time whatever the model size. The block buffer is reused
        between chunks: consume it before asking for the next one.
        """
        n = len(self)
        numel = like.numel()
        width = max(1, min(numel, CHUNK_BUDGET // n))
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


def delta_norms(deltas: Deltas) -> list[float]:
    """L2 norm of each whole delta, in client-id order, accumulated in float64 tensor by tensor."""
    out = []
    for i in range(len(deltas)):
        sq = 0.0
        for name in deltas.names(i):
            t = deltas.tensor(i, name).to(torch.float64).reshape(-1)
            sq += float(torch.dot(t, t))
        out.append(math.sqrt(sq))
    return out


def apply(old: torch.Tensor, step: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """old + scale · step, computed in float32 and returned in old's dtype."""
    return torch.add(old.to(torch.float32), step, alpha=scale).to(old.dtype)


def _weights(num_examples: Sequence[int], spec: AggregationSpec) -> list[float]:
    if spec.weighting == "uniform":
        return [1.0 / len(num_examples)] * len(num_examples)
    total = sum(num_examples)
    if total <= 0 or any(n < 0 for n in num_examples):
        raise ValueError("weighting by num_examples needs positive example counts")
    return cap_shares([n / total for n in num_examples], spec.max_weight_share)


def cap_shares(weights: Sequence[float], cap: float) -> list[float]:
    """Normalised weights with none above `cap`, the excess spread pro rata over the rest.

    Water-filling: weights at the cap are fixed there and the remaining mass is
    shared among the others in proportion to their own weights, until none
    exceeds it. With fewer than 1/cap updates no cap can hold, so the cap
    becomes 1/n (equal weights): one member never outweighs the others.
    """
    n = len(weights)
    cap = max(cap, 1.0 / n)
    out = list(weights)
    capped: set[int] = set()
    while True:
        over = {i for i in range(n) if i not in capped and out[i] > cap}
        if not over:
            return out
        capped |= over
        free = [i for i in range(n) if i not in capped]
        left = 1.0 - cap * len(capped)
        mass = sum(weights[i] for i in free)
        for i in capped:
            out[i] = cap
        for i in free:
            out[i] = left * weights[i] / mass if mass > 0 else left / len(free)


def aggregate(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[UpdateInput],
    spec: AggregationSpec,
    server_state: Mapping[str, torch.Tensor],
) -> AggregationResult:
    """Run the spec's strategy over accepted updates stored as blobs (the service's entry)."""
    return get_strategy(spec.strategy)(global_state, BlobDeltas(updates), spec, server_state)
