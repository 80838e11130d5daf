"""What one member can do to the global state: its weight, its norm, a non-finite aggregate."""

from __future__ import annotations

import pytest
import torch

from aggregator_service.aggregation.base import Contributions, cap_shares
from aggregator_service.services.rounds import aggregate_finite
from shared.spec import DEFAULT_CLIP_NORM, AggregationSpec, parse_spec
from tests.aggregator_service.aggregation.conftest import write_blob
from tests.aggregator_service.conftest import tiny_spec

HUGE = 3.0e38


def test_no_share_passes_the_cap_and_the_excess_goes_pro_rata():
    weights = cap_shares([0.1, 0.3, 0.6], 0.5)
    assert weights == pytest.approx([0.125, 0.375, 0.5])
    assert sum(weights) == pytest.approx(1.0)
    # capping one can push another over: both end at the cap
    assert cap_shares([0.05, 0.45, 0.5], 0.4) == pytest.approx([0.2, 0.4, 0.4])


def test_with_fewer_members_than_one_over_the_cap_they_weigh_equally():
    assert cap_shares([1.0], 0.5) == [1.0]
    assert cap_shares([1e-9, 1.0 - 1e-9], 0.5) == pytest.approx([0.5, 0.5])


def test_a_huge_example_count_buys_at_most_the_cap(make_update, deltas):
    updates = [
        make_update("honest-a", {"w": [0.0]}, 100),
        make_update("honest-b", {"w": [0.0]}, 100),
        make_update("mallory", {"w": [0.0]}, 10**15),
    ]
    weights = Contributions(deltas(updates), AggregationSpec()).weights
    assert weights == pytest.approx([0.25, 0.25, 0.5])


def test_lightweight_methods_clip_by_default_unless_told_otherwise():
    assert parse_spec(tiny_spec()).aggregation.clip_norm == DEFAULT_CLIP_NORM
    explicit = tiny_spec()
    explicit["aggregation"] = {"clip_norm": 2.5}
    assert parse_spec(explicit).aggregation.clip_norm == 2.5
    off = tiny_spec()
    off["aggregation"] = {"clip_norm": None}
    assert parse_spec(off).aggregation.clip_norm is None
    full = tiny_spec()
    full["method"] = {"name": "full"}
    assert parse_spec(full).aggregation.clip_norm is None
    # a parsed spec round-trips unchanged
    spec = parse_spec(tiny_spec())
    assert parse_spec(spec.model_dump(mode="json")) == spec


def test_a_non_finite_aggregate_drops_the_largest_update_and_is_recomputed(tmp_path, make_update):
    # No bounds at all: fedadam squares the attacker's 3e38 into an infinite server state.
    spec = AggregationSpec(
        strategy="fedadam", max_weight_share=1.0, clip_norm=None, max_abs_value=None
    )
    ups = [
        make_update("a", {"w": [0.01, -0.02]}, 10),
        make_update("b", {"w": [0.03, 0.01]}, 10),
        make_update("m", {"w": [HUGE, HUGE]}, 10**9),
    ]
    inputs = [write_blob(tmp_path, u) for u in ups]
    old = {"w": torch.zeros(2)}

    result, excluded = aggregate_finite(old, inputs, spec, {})

    assert result is not None
    assert list(excluded) == ["m"] and "non-finite" in excluded["m"]
    for t in (*result.state.values(), *result.server_state.values()):
        assert bool(torch.isfinite(t).all())
    honest, _ = aggregate_finite(old, inputs[:2], spec, {})
    assert honest is not None and torch.equal(result.state["w"], honest.state["w"])


def test_nothing_finite_left_publishes_nothing(tmp_path, make_update):
    spec = AggregationSpec(
        strategy="fedadam", max_weight_share=1.0, clip_norm=None, max_abs_value=None
    )
    inputs = [write_blob(tmp_path, make_update(c, {"w": [HUGE]}, 1)) for c in ("m1", "m2")]

    result, excluded = aggregate_finite({"w": torch.zeros(1)}, inputs, spec, {})

    assert result is None and sorted(excluded) == ["m1", "m2"]
