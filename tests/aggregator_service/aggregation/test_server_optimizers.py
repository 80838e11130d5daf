"""FedAvgM, FedAdam, FedYogi, FedAdagrad: one round by hand, then state carried to round two.

Shared setting: two clients, uniform weighting, so the averaged delta is
Δ = mean([3, 0.5], [1, 0]) = [2, 0.25] on old = [1, -1]. The adaptive ones use
η = 1, β1 = 0.5, β2 = 0.75, τ = 0.5: m = 0.5 Δ = [1, 0.125] and v starts at τ² = 0.25.
"""

from __future__ import annotations

import math

import pytest
import torch

from aggregator_service.aggregation import get_strategy
from shared.spec import AggregationSpec

FEDOPT = {"server_lr": 1.0, "beta1": 0.5, "beta2": 0.75, "tau": 0.5}


def _spec(strategy: str) -> AggregationSpec:
    options = {"server_lr": 2.0, "momentum": 0.5} if strategy == "fedavgm" else FEDOPT
    return AggregationSpec(strategy=strategy, weighting="uniform", options=options)  # type: ignore[arg-type]


def _adaptive(v: list[float]) -> list[float]:
    """x = old + η m / (sqrt(v) + τ) for the shared setting."""
    return [1 + 1.0 / (math.sqrt(v[0]) + 0.5), -1 + 0.125 / (math.sqrt(v[1]) + 0.5)]


# strategy -> (expected new state, expected v; None when the strategy keeps no v)
ROUND_ONE = {
    # m = Δ (zero buffer), x = old + 2 m
    "fedavgm": ([5.0, -0.5], None),
    # v = 0.75 τ² + 0.25 Δ² = [0.1875 + 1, 0.1875 + 0.015625]
    "fedadam": (_adaptive([1.1875, 0.203125]), [1.1875, 0.203125]),
    # Δ² = [4, 0.0625]: v - Δ² = [-3.75, 0.1875], so v = τ² ∓ 0.25 Δ²·sign → [1.25, 0.234375]
    "fedyogi": (_adaptive([1.25, 0.234375]), [1.25, 0.234375]),
    # v = τ² + Δ²
    "fedadagrad": (_adaptive([4.25, 0.3125]), [4.25, 0.3125]),
}


@pytest.fixture
def round_one_updates(make_update):
    return [make_update("c1", {"w": [3.0, 0.5]}), make_update("c2", {"w": [1.0, 0.0]})]


@pytest.mark.parametrize("strategy", sorted(ROUND_ONE))
def test_first_round_matches_the_hand_computed_step(strategy, round_one_updates, deltas):
    expected_state, expected_v = ROUND_ONE[strategy]
    old = {"w": torch.tensor([1.0, -1.0])}

    result = get_strategy(strategy)(old, deltas(round_one_updates), _spec(strategy), {})

    assert torch.allclose(result.state["w"], torch.tensor(expected_state), rtol=1e-6, atol=0)
    expected_m = [2.0, 0.25] if strategy == "fedavgm" else [1.0, 0.125]
    assert torch.equal(result.server_state["m/w"], torch.tensor(expected_m))
    if expected_v is None:
        assert set(result.server_state) == {"m/w"}
    else:
        assert set(result.server_state) == {"m/w", "v/w"}
        assert torch.allclose(result.server_state["v/w"], torch.tensor(expected_v), rtol=1e-6)


def test_fedavgm_second_round_uses_the_stored_momentum(make_update, deltas):
    stored = {"m/w": torch.tensor([2.0, 0.25])}
    updates = [make_update("c1", {"w": [1.0, 1.0]})]
    old = {"w": torch.tensor([5.0, -0.5])}

    result = get_strategy("fedavgm")(old, deltas(updates), _spec("fedavgm"), stored)

    # m = 0.5 [2, 0.25] + [1, 1] = [2, 1.125]; x = old + 2 m
    assert torch.equal(result.server_state["m/w"], torch.tensor([2.0, 1.125]))
    assert torch.equal(result.state["w"], torch.tensor([9.0, 1.75]))


def test_fedadam_second_round_uses_the_stored_moments(make_update, deltas):
    stored = {"m/w": torch.tensor([1.0, 0.125]), "v/w": torch.tensor([1.1875, 0.203125])}
    updates = [make_update("c1", {"w": [-1.0, 0.5]})]
    old = {"w": torch.tensor([0.0, 0.0])}

    result = get_strategy("fedadam")(old, deltas(updates), _spec("fedadam"), stored)

    # m = 0.5 m + 0.5 Δ = [0, 0.3125]; v = 0.75 v + 0.25 Δ² = [1.140625, 0.21484375]
    assert torch.equal(result.server_state["m/w"], torch.tensor([0.0, 0.3125]))
    assert torch.allclose(
        result.server_state["v/w"], torch.tensor([1.140625, 0.21484375]), rtol=1e-7
    )
    expected = [0.0, 0.3125 / (math.sqrt(0.21484375) + 0.5)]
    assert torch.allclose(result.state["w"], torch.tensor(expected), rtol=1e-6, atol=0)


def test_stored_state_of_the_wrong_shape_is_refused(round_one_updates, deltas):
    old = {"w": torch.tensor([1.0, -1.0])}
    stored = {"m/w": torch.zeros(3), "v/w": torch.zeros(3)}

    with pytest.raises(ValueError, match=r"stored server state 'm/w' has shape \[3\]"):
        get_strategy("fedadam")(old, deltas(round_one_updates), _spec("fedadam"), stored)
