"""Coordinate-wise robust statistics over the round's deltas, computed chunk by chunk.

A per-coordinate statistic needs every client's value of that coordinate at
once, so the deltas are read in slices (`Contributions.chunks`): memory stays
O(model + chunk budget) whatever the number of clients. Every update counts
once: the spec's `weighting` does not apply, since weighting by self-reported
example counts would let one client buy its way past the robust statistic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from aggregator_service.aggregation.base import AggregationResult, Contributions
from aggregator_service.aggregation.deltas import Deltas
from shared.spec import AggregationSpec

__all__ = ["BlockStatistic", "aggregate_coordinatewise", "ordered_rows"]

# [n_updates, c] float32 block -> [c] statistic (a new tensor).
BlockStatistic = Callable[[torch.Tensor], torch.Tensor]


def ordered_rows(block: torch.Tensor) -> torch.Tensor:
    """Each column of the block sorted ascending (values only; ties are equal values).

    Sorted as contiguous rows of the transpose (about twice as fast as sorting
    down the columns in place); returned as an [n, c] view.
    """
    return torch.sort(block.T.contiguous(), dim=1).values.T


def aggregate_coordinatewise(
    global_state: Mapping[str, torch.Tensor],
    deltas: Deltas,
    spec: AggregationSpec,
    statistic: BlockStatistic,
) -> AggregationResult:
    """new = old + statistic(Δ_1..Δ_n), coordinate by coordinate."""
    contributions = Contributions(deltas, spec)
    out: dict[str, torch.Tensor] = {}
    for name in sorted(global_state):
        old = global_state[name]
        result = old.to(torch.float32, copy=True)
        flat = result.view(-1)
        for where, block in contributions.chunks(name, old):
            flat[where].add_(statistic(block))
        out[name] = result.to(old.dtype)
    return AggregationResult(out)
