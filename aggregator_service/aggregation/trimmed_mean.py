"""Coordinate-wise trimmed mean of the client deltas.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018. Per coordinate, the
floor(β·n) largest and floor(β·n) smallest values are dropped and the rest
averaged (β = options.trim_fraction, validated to [0, 0.5) by the spec).
Unweighted and chunked: see `coordinatewise`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import cast

import torch

from aggregator_service.aggregation.base import AggregationResult, register_strategy
from aggregator_service.aggregation.coordinatewise import aggregate_coordinatewise, ordered_rows
from aggregator_service.aggregation.deltas import Deltas
from shared.spec import AggregationSpec
from shared.strategies import TrimmedMeanOptions


def trim_count(n: int, fraction: float) -> int:
    """How many values to cut from each end; refuses a trim that would leave nothing."""
    k = math.floor(fraction * n)
    if n - 2 * k < 1:
        raise ValueError(
            f"trimmed_mean: trim_fraction {fraction} cuts {k} of {n} updates from each end "
            "and leaves none; use a trim_fraction below 0.5"
        )
    return k


def trimmed_mean_of_block(block: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of rows k..n-k-1 of the sorted block, summed in ascending order."""
    n = block.shape[0]
    k = trim_count(n, fraction)
    rows = ordered_rows(block)
    acc = rows[k].clone()
    for j in range(k + 1, n - k):
        acc.add_(rows[j])
    return acc.div_(n - 2 * k)


@register_strategy("trimmed_mean")
def trimmed_mean(
    global_state: Mapping[str, torch.Tensor],
    deltas: Deltas,
    spec: AggregationSpec,
    server_state: Mapping[str, torch.Tensor],
) -> AggregationResult:
    """new = old + the per-coordinate mean of the values left after trimming both ends."""
    fraction = cast(TrimmedMeanOptions, spec.strategy_options()).trim_fraction
    return aggregate_coordinatewise(
        global_state, deltas, spec, lambda block: trimmed_mean_of_block(block, fraction)
    )
