"""Coordinate-wise median and trimmed mean: hand cases, odd and even counts, chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aggregator_service.aggregation import base as aggregation_base
from aggregator_service.aggregation import get_strategy
from aggregator_service.aggregation.median import median
from aggregator_service.aggregation.trimmed_mean import trim_count, trimmed_mean
from shared.spec import AggregationSpec

MEDIAN_CASES = [
    # (per-client values of one coordinate pair, expected median)
    ([[1.0, -4.0], [5.0, 0.0], [2.0, 9.0]], [2.0, 0.0]),
    ([[1.0, -4.0], [5.0, 0.0], [2.0, 9.0], [10.0, 1.0]], [3.5, 0.5]),
    ([[7.0, 7.0]], [7.0, 7.0]),
    ([[1.0, 2.0], [3.0, 2.0]], [2.0, 2.0]),
]


@pytest.mark.parametrize(("values", "expected"), MEDIAN_CASES, ids=["odd", "even", "one", "two"])
def test_median_takes_the_middle_value_or_the_mean_of_the_two_middles(
    make_update, values, expected, deltas
):
    updates = [
        make_update(f"c{i}", {"w": v}, num_examples=1 + 99 * i) for i, v in enumerate(values)
    ]
    old = {"w": torch.tensor([1.0, 1.0])}

    result = get_strategy("median")(old, deltas(updates), AggregationSpec(strategy="median"), {})

    assert torch.equal(result.state["w"], torch.tensor(expected) + 1.0)


TRIM_CASES = [
    # (values per client, trim_fraction, expected): floor(β n) cut from each end
    ([100.0, 1.0, 2.0, 3.0, -50.0], 0.2, 2.0),  # k = 1
    ([100.0, 1.0, 2.0, -50.0], 0.2, 13.25),  # k = 0: the plain mean
    ([100.0, 1.0, 2.0, -50.0], 0.25, 1.5),  # k = 1
    ([9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, -9.0], 0.49, 4.5),  # k = 4
]


@pytest.mark.parametrize(("values", "fraction", "expected"), TRIM_CASES)
def test_trimmed_mean_cuts_floor_fraction_times_n_from_each_end(
    make_update, values, fraction, expected, deltas
):
    updates = [make_update(f"c{i}", {"w": [v]}) for i, v in enumerate(values)]
    spec = AggregationSpec(strategy="trimmed_mean", options={"trim_fraction": fraction})

    result = get_strategy("trimmed_mean")({"w": torch.tensor([0.0])}, deltas(updates), spec, {})

    assert torch.equal(result.state["w"], torch.tensor([expected]))


@pytest.mark.parametrize(("n", "fraction"), [(2, 0.5), (4, 0.5), (3, 0.7)])
def test_a_trim_that_would_leave_nothing_is_refused(n, fraction):
    with pytest.raises(ValueError, match="leaves none"):
        trim_count(n, fraction)


def test_every_fraction_the_spec_accepts_leaves_at_least_one_value():
    for n in range(1, 64):
        for fraction in (0.0, 0.1, 0.25, 0.333, 0.49, 0.4999999):
            assert n - 2 * trim_count(n, fraction) >= 1


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("budget", [1, 5, 64])
def test_chunked_statistics_match_numpy_and_do_not_depend_on_the_chunk_size(
    make_update, n, budget, deltas, monkeypatch
):
    gen = torch.Generator().manual_seed(n)
    shapes = {"a": (6, 5), "b": (11,), "c": ()}
    values = [{k: torch.randn(s, generator=gen) for k, s in shapes.items()} for _ in range(n)]
    updates = [make_update(f"c{i}", d) for i, d in enumerate(values)]
    old = {k: torch.zeros(s) for k, s in shapes.items()}
    tm_spec = AggregationSpec(strategy="trimmed_mean", options={"trim_fraction": 0.25})
    k = n // 4

    med_whole = median(old, deltas(updates), AggregationSpec(strategy="median"), {})
    tm_whole = trimmed_mean(old, deltas(updates), tm_spec, {})
    monkeypatch.setattr(aggregation_base, "CHUNK_BUDGET", budget)
    med_small = median(old, deltas(updates), AggregationSpec(strategy="median"), {})
    tm_small = trimmed_mean(old, deltas(updates), tm_spec, {})

    for name in shapes:
        stacked = np.stack([d[name].numpy() for d in values])
        assert torch.equal(med_small.state[name], med_whole.state[name])
        assert torch.equal(tm_small.state[name], tm_whole.state[name])
        np.testing.assert_allclose(
            med_whole.state[name].numpy(), np.median(stacked, axis=0), rtol=1e-6
        )
        trimmed = np.sort(stacked, axis=0)[k : n - k].mean(axis=0)
        np.testing.assert_allclose(tm_whole.state[name].numpy(), trimmed, rtol=1e-5, atol=1e-7)
