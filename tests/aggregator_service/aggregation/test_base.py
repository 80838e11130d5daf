"""The strategy registry and the delta reader's guards."""

from __future__ import annotations

import pytest
import torch

from aggregator_service.aggregation import STRATEGIES, get_strategy
from aggregator_service.aggregation.base import Contributions
from shared.spec import AggregationSpec
from shared.strategies import STRATEGY_NAMES


def test_every_strategy_the_spec_accepts_is_registered():
    assert set(STRATEGIES) == set(STRATEGY_NAMES)


def test_unknown_strategy_names_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown aggregation strategy 'bulyan'; known: \['fedadagrad'"
    ):
        get_strategy("bulyan")


def test_weights_follow_examples_or_are_uniform(make_update, deltas):
    updates = [make_update("b", {"w": [0.0]}, 30), make_update("a", {"w": [0.0]}, 10)]

    by_examples = Contributions(deltas(updates), AggregationSpec(max_weight_share=1.0))
    assert list(by_examples.deltas.client_ids) == ["a", "b"]
    assert by_examples.weights == [0.25, 0.75]
    assert Contributions(deltas(updates), AggregationSpec(weighting="uniform")).weights == [
        0.5,
        0.5,
    ]


def test_a_round_without_updates_is_refused(deltas):
    with pytest.raises(ValueError, match="no updates"):
        deltas([])


def test_two_updates_from_one_client_are_refused(make_update, deltas):
    update = make_update("c1", {"w": [1.0]})
    with pytest.raises(ValueError, match="more than one update from client"):
        deltas([update, update])


@pytest.mark.parametrize("strategy", ["fedavg", "median"])
def test_a_delta_missing_a_tensor_names_client_and_tensor(strategy, make_update, deltas):
    updates = [make_update("c1", {"w": [1.0]})]
    spec = AggregationSpec(strategy=strategy)  # type: ignore[arg-type]
    old = {"w": torch.zeros(1), "b": torch.zeros(1)}
    with pytest.raises(ValueError, match="update of client c1 has no tensor 'b'"):
        get_strategy(strategy)(old, deltas(updates), spec, {})


@pytest.mark.parametrize("strategy", ["fedavg", "trimmed_mean"])
def test_a_delta_of_the_wrong_shape_is_refused(strategy, make_update, deltas):
    updates = [make_update("c1", {"w": [1.0, 2.0]})]
    spec = AggregationSpec(strategy=strategy)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"tensor 'w' has shape \[2\], the global state has \[3\]"):
        get_strategy(strategy)({"w": torch.zeros(3)}, deltas(updates), spec, {})
