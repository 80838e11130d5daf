"""FedAvg: the example-weighted (or uniform) mean of client deltas.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient
Learning of Deep Networks from Decentralized Data", AISTATS 2017.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from aggregator_service.aggregation.base import (
    AggregationResult,
    UpdateInput,
    open_deltas,
    register_strategy,
)
from shared.spec import AggregationSpec


@register_strategy("fedavg")
def fedavg(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[UpdateInput],
    spec: AggregationSpec,
    server_state: Mapping[str, torch.Tensor],
) -> AggregationResult:
    """new = old + Σ_k w_k Δ_k, one accumulator per tensor (which becomes the result)."""
    out: dict[str, torch.Tensor] = {}
    with open_deltas(updates, spec) as deltas:
        for name in sorted(global_state):
            old = global_state[name]
            mean = deltas.weighted_mean(name, old)
            out[name] = mean.add_(old.to(torch.float32)).to(old.dtype)
    return AggregationResult(out)
