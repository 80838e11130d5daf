"""FedAvgM: FedAvg with server momentum.

Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification", arXiv:1909.06335, 2019. The round's weighted
mean delta Δ feeds a heavy-ball momentum buffer on the server:
m ← μ m + Δ, x ← x + η m. The buffer is the strategy's server state
(`m/<param>`, float32), zero before the first round.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from aggregator_service.aggregation.base import (
    AggregationResult,
    Contributions,
    apply,
    register_strategy,
)
from aggregator_service.aggregation.deltas import Deltas
from aggregator_service.aggregation.fedopt import Moments
from shared.spec import AggregationSpec
from shared.strategies import FedAvgMOptions


@register_strategy("fedavgm")
def fedavgm(
    global_state: Mapping[str, torch.Tensor],
    deltas: Deltas,
    spec: AggregationSpec,
    server_state: Mapping[str, torch.Tensor],
) -> AggregationResult:
    """m ← μ m + Δ, x ← x + η m."""
    opts = spec.strategy_options()
    assert isinstance(opts, FedAvgMOptions)
    moments = Moments(server_state)
    out = {}
    for name, old, delta in Contributions(deltas, spec).means(global_state):
        m = moments.get("m", name, old, initial=0.0).mul_(opts.momentum).add_(delta)
        out[name] = apply(old, m, opts.server_lr)
    return AggregationResult(out, moments.updated)
