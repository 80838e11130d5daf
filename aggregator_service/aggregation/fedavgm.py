"""FedAvgM: FedAvg with server momentum.

Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification", arXiv:1909.06335, 2019. The round's weighted
mean delta Δ feeds a heavy-ball momentum buffer on the server:
m ← μ m + Δ, x ← x + η m. The buffer is the strategy's server state
(`m/<param>`, float32), zero before the first round.
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
from aggregator_service.aggregation.fedopt import momentum_key, stored_moment
from shared.spec import AggregationSpec, FedAvgMOptions


@register_strategy("fedavgm")
def fedavgm(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[UpdateInput],
    spec: AggregationSpec,
    server_state: Mapping[str, torch.Tensor],
) -> AggregationResult:
    opts = spec.strategy_options()
    if not isinstance(opts, FedAvgMOptions):  # pragma: no cover - registry wiring error
        raise TypeError(f"fedavgm needs FedAvgMOptions, got {type(opts).__name__}")
    out: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    with open_deltas(updates, spec) as deltas:
        for name in sorted(global_state):
            old = global_state[name]
            delta = deltas.weighted_mean(name, old)
            m = stored_moment(server_state, momentum_key(name), old, 0.0)
            m.mul_(opts.momentum).add_(delta)
            out[name] = torch.add(old.to(torch.float32), m, alpha=opts.server_lr).to(old.dtype)
            state[momentum_key(name)] = m
    return AggregationResult(out, state)
