"""The strategy interface and what every strategy shares.

A strategy is a pure function: the current global trainable state, the round's
updates (delta blobs on disk, in client-id order), the spec's aggregation
section and the strategy's stored server state in; the next global state and
the server state to store out. Deltas are read memory-mapped, one tensor at a
time, so memory is O(model) whatever the number of clients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open

from shared.spec import AggregationSpec

__all__ = [
    "STRATEGIES",
    "AggregationResult",
    "DeltaReader",
    "Strategy",
    "UpdateInput",
    "get_strategy",
    "open_deltas",
    "register_strategy",
]


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


class DeltaReader:
    """The round's deltas, open memory-mapped, read one tensor at a time in client-id order.

    `scales[i]` folds the per-update clip factor (1.0 when `clip_norm` is unset);
    `weights[i]` are the normalised aggregation weights (sum to 1).
    """

    def __init__(self, handles: list[Any], updates: Sequence[UpdateInput], spec: AggregationSpec):
        self._handles = handles
        self.updates = list(updates)
        self.weights = _weights(self.updates, spec)
        self.scales = [1.0] * len(handles)
        if spec.clip_norm is not None:
            self.scales = [min(1.0, spec.clip_norm / n) if n > 0 else 1.0 for n in self.norms()]

    def __len__(self) -> int:
        return len(self._handles)

    def tensor(self, i: int, name: str) -> torch.Tensor:
        """Delta `i`'s tensor `name` as float32, with its clip factor applied."""
        t = self._handles[i].get_tensor(name).to(torch.float32)
        if self.scales[i] != 1.0:
            t.mul_(self.scales[i])
        return t

    def tensors(self, name: str) -> Iterator[torch.Tensor]:
        for i in range(len(self._handles)):
            yield self.tensor(i, name)

    def norms(self) -> list[float]:
        """L2 norm of each whole delta, computed tensor by tensor."""
        out = []
        for h in self._handles:
            sq = 0.0
            for name in h.keys():  # noqa: SIM118 - safe_open handles are not mappings
                t = h.get_tensor(name).to(torch.float64)
                sq += float(torch.dot(t.flatten(), t.flatten()))
            out.append(math.sqrt(sq))
        return out

    def weighted_mean(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Weighted mean of tensor `name` over all deltas, summed in client-id order (float32)."""
        acc = torch.zeros(like.shape, dtype=torch.float32)
        for i in range(len(self._handles)):
            acc.add_(self.tensor(i, name), alpha=self.weights[i])
        return acc


def _weights(updates: Sequence[UpdateInput], spec: AggregationSpec) -> list[float]:
    if spec.weighting == "uniform":
        return [1.0 / len(updates)] * len(updates)
    total = sum(u.num_examples for u in updates)
    return [u.num_examples / total for u in updates]


@contextmanager
def open_deltas(updates: Sequence[UpdateInput], spec: AggregationSpec) -> Iterator[DeltaReader]:
    """Open every update's delta blob memory-mapped, sorted by client id."""
    if not updates:
        raise ValueError("cannot aggregate a round with no updates")
    ordered = sorted(updates, key=lambda u: u.client_id)
    with ExitStack() as stack:
        handles = [
            stack.enter_context(safe_open(str(u.path), framework="pt", device="cpu"))
            for u in ordered
        ]
        yield DeltaReader(handles, ordered, spec)
