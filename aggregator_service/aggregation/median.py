"""Coordinate-wise median of the client deltas.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018. With an even number of updates
the median is the mean of the two middle values (not the lower one).
Unweighted and chunked: see `coordinatewise`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from aggregator_service.aggregation.base import AggregationResult, register_strategy
from aggregator_service.aggregation.coordinatewise import aggregate_coordinatewise, ordered_rows
from aggregator_service.aggregation.deltas import Deltas
from shared.spec import AggregationSpec


def median_of_block(block: torch.Tensor) -> torch.Tensor:
    n = block.shape[0]
    rows = ordered_rows(block)
    if n % 2:
        return rows[n // 2].clone()
    return rows[n // 2 - 1].add(rows[n // 2]).mul_(0.5)


@register_strategy("median")
def median(
    global_state: Mapping[str, torch.Tensor],
    deltas: Deltas,
    spec: AggregationSpec,
    server_state: Mapping[str, torch.Tensor],
) -> AggregationResult:
    return aggregate_coordinatewise(global_state, deltas, spec, median_of_block)
