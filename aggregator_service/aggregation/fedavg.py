"""FedAvg: the example-weighted (or uniform) mean of client deltas.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient
Learning of Deep Networks from Decentralized Data", AISTATS 2017.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from aggregator_service.aggregation.base import (
    AggregationResult,
    Contributions,
    register_strategy,
)
from aggregator_service.aggregation.deltas import Deltas
from shared.spec import AggregationSpec


@register_strategy("fedavg")
def fedavg(
    global_state: Mapping[str, torch.Tensor],
    deltas: Deltas,
    spec: AggregationSpec,
    server_state: Mapping[str, torch.Tensor],
) -> AggregationResult:
    """new = old + Σ_k w_k Δ_k (the mean's buffer becomes the result: no second copy)."""
    means = Contributions(deltas, spec).means(global_state)
    return AggregationResult(
        {name: mean.add_(old.to(torch.float32)).to(old.dtype) for name, old, mean in means}
    )
