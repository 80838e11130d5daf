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

from collections.abc import Callable, Mapping, Sequence

import torch

from aggregator_service.aggregation.base import AggregationResult, UpdateInput, open_deltas
from shared.spec import AggregationSpec, FedOptOptions

__all__ = ["SecondMoment", "momentum_key", "server_optimise", "stored_moment", "variance_key"]

# v ← f(v, Δ², β2), in place; returns nothing.
SecondMoment = Callable[[torch.Tensor, torch.Tensor, float], None]


def momentum_key(name: str) -> str:
    return f"m/{name}"


def variance_key(name: str) -> str:
    return f"v/{name}"


def stored_moment(
    server_state: Mapping[str, torch.Tensor], key: str, like: torch.Tensor, initial: float
) -> torch.Tensor:
    """A fresh float32 copy of a stored moment, or a tensor of `initial` when none is stored."""
    stored = server_state.get(key)
    if stored is None:
        return torch.full(like.shape, initial, dtype=torch.float32)
    if stored.shape != like.shape:
        raise ValueError(
            f"stored server state {key!r} has shape {list(stored.shape)}, "
            f"the global state has {list(like.shape)}"
        )
    return stored.to(torch.float32, copy=True)


def server_optimise(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[UpdateInput],
    spec: AggregationSpec,
    server_state: Mapping[str, torch.Tensor],
    second_moment: SecondMoment,
) -> AggregationResult:
    """x ← x + η m / (sqrt(v) + τ) with m ← β1 m + (1-β1) Δ and v from `second_moment`."""
    opts = spec.strategy_options()
    if not isinstance(opts, FedOptOptions):  # pragma: no cover - registry wiring error
        raise TypeError(f"{spec.strategy} needs FedOptOptions, got {type(opts).__name__}")
    out: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    with open_deltas(updates, spec) as deltas:
        for name in sorted(global_state):
            old = global_state[name]
            delta = deltas.weighted_mean(name, old)
            m = stored_moment(server_state, momentum_key(name), old, 0.0)
            v = stored_moment(server_state, variance_key(name), old, opts.tau**2)
            m.mul_(opts.beta1).add_(delta, alpha=1.0 - opts.beta1)
            second_moment(v, delta.mul_(delta), opts.beta2)  # delta is not needed after this
            step = m / v.sqrt().add_(opts.tau)
            out[name] = step.mul_(opts.server_lr).add_(old.to(torch.float32)).to(old.dtype)
            state[momentum_key(name)] = m
            state[variance_key(name)] = v
    return AggregationResult(out, state)
