"""FedYogi: Yogi as the server optimiser on the averaged client delta.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2:
v ← v - (1-β2) Δ² sign(v - Δ²), which grows v additively rather than
multiplicatively (Zaheer et al., "Adaptive Methods for Nonconvex Optimization",
NeurIPS 2018). Shared update and state handling in `fedopt`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from aggregator_service.aggregation.base import AggregationResult, register_strategy
from aggregator_service.aggregation.deltas import Deltas
from aggregator_service.aggregation.fedopt import server_optimise
from shared.spec import AggregationSpec


def yogi_second_moment(v: torch.Tensor, delta_sq: torch.Tensor, beta2: float) -> None:
    direction = torch.sign(v - delta_sq)
    v.addcmul_(delta_sq, direction, value=-(1.0 - beta2))


@register_strategy("fedyogi")
def fedyogi(
    global_state: Mapping[str, torch.Tensor],
    deltas: Deltas,
    spec: AggregationSpec,
    server_state: Mapping[str, torch.Tensor],
) -> AggregationResult:
    return server_optimise(global_state, deltas, spec, server_state, yogi_second_moment)
