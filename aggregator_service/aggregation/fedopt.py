"""What the server optimisers share: the averaged delta as a pseudo-gradient, and their state.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive
Federated Optimization", ICLR 2021 (Algorithm 2). The round's weighted mean
delta Δ is treated as a (negated) gradient and fed to a server optimiser whose
moments persist across rounds as the strategy's server state: tensors named
`m/<param>` and `v/<param>`, float32, stored by the service after every round.

Initial state (an empty server state, i.e. the first round): m = 0 and, as in
the paper's Algorithm 2 (which asks for v₋₁ ≥ τ²), v = τ². Flower starts v at
0 and adds Adam's bias correction to η; we follow the paper: no bias
correction, v₋₁ = τ², so the first step is η (1-β1) Δ / (sqrt(v0) + τ).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from aggregator_service.aggregation.base import AggregationResult, Contributions, apply
from aggregator_service.aggregation.deltas import Deltas
from shared.spec import AggregationSpec
from shared.strategies import FedOptOptions

__all__ = ["Moments", "SecondMoment", "server_optimise"]

# v ← f(v, Δ², β2), in place; returns nothing.
SecondMoment = Callable[[torch.Tensor, torch.Tensor, float], None]


class Moments:
    """A server optimiser's per-tensor moments: read from the stored server state as fresh
    float32 copies (or `initial` before the first round), kept as `<kind>/<param>`."""

    def __init__(self, stored: Mapping[str, torch.Tensor]) -> None:
        self.stored = stored
        self.updated: dict[str, torch.Tensor] = {}

    def get(self, kind: str, name: str, like: torch.Tensor, *, initial: float) -> torch.Tensor:
        key = f"{kind}/{name}"
        stored = self.stored.get(key)
        if stored is None:
            moment = torch.full(like.shape, initial, dtype=torch.float32)
        elif stored.shape != like.shape:
            raise ValueError(
                f"stored server state {key!r} has shape {list(stored.shape)}, "
                f"the global state has {list(like.shape)}"
            )
        else:
            moment = stored.to(torch.float32, copy=True)
        self.updated[key] = moment
        return moment


def server_optimise(
    global_state: Mapping[str, torch.Tensor],
    deltas: Deltas,
    spec: AggregationSpec,
    server_state: Mapping[str, torch.Tensor],
    second_moment: SecondMoment,
) -> AggregationResult:
    """x ← x + η m / (sqrt(v) + τ) with m ← β1 m + (1-β1) Δ and v from `second_moment`."""
    opts = spec.strategy_options()
    assert isinstance(opts, FedOptOptions)
    moments = Moments(server_state)
    out = {}
    for name, old, delta in Contributions(deltas, spec).means(global_state):
        m = moments.get("m", name, old, initial=0.0)
        v = moments.get("v", name, old, initial=opts.tau**2)
        m.mul_(opts.beta1).add_(delta, alpha=1.0 - opts.beta1)
        second_moment(v, delta.mul_(delta), opts.beta2)  # delta is not needed after this
        out[name] = apply(old, m / v.sqrt().add_(opts.tau), opts.server_lr)
    return AggregationResult(out, moments.updated)
