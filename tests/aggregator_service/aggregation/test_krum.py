"""Krum and multi-Krum: who is selected, ties, too few updates, and what memory they stream."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from aggregator_service.aggregation import BlobDeltas, UpdateInput, get_strategy
from aggregator_service.aggregation import base as aggregation_base
from aggregator_service.aggregation.base import Contributions
from aggregator_service.aggregation.krum import krum_scores, pairwise_sq_distances, select
from shared.blobs import DeltaMetadata
from shared.spec import AggregationSpec

KRUMS = ["krum", "multi_krum"]


def _spec(strategy: str, **options: int) -> AggregationSpec:
    return AggregationSpec(strategy=strategy, options=options)


def _honest_and_outlier(make_update, outlier: list[float]) -> list:
    honest = [[1.0, 1.0], [1.2, 0.9], [0.9, 1.1], [1.1, 1.0], [1.0, 1.2]]
    updates = [make_update(f"h{i}", {"w": v}) for i, v in enumerate(honest)]
    return [*updates, make_update("z-attacker", {"w": outlier})]


@pytest.mark.parametrize("outlier", [[-10.0, -10.0], [50.0, 50.0], [1.0, -40.0]])
def test_krum_never_selects_the_outlier(make_update, deltas, outlier):
    updates = _honest_and_outlier(make_update, outlier)
    old = {"w": torch.zeros(2)}

    result = get_strategy("krum")(old, deltas(updates), _spec("krum", num_byzantine=1), {})

    honest = [u.tensors["w"] for u in updates[:-1]]
    assert any(torch.equal(result.state["w"], h) for h in honest)


def test_krum_applies_the_update_with_the_lowest_score(make_update, deltas):
    updates = _honest_and_outlier(make_update, [-10.0, -10.0])
    flat = np.array([u.tensors["w"].numpy() for u in updates], dtype=np.float64)
    dist = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(axis=2)
    scores = [np.sort(np.delete(dist[i], i))[: 6 - 1 - 2].sum() for i in range(6)]

    result = get_strategy("krum")(
        {"w": torch.zeros(2)}, deltas(updates), _spec("krum", num_byzantine=1), {}
    )

    assert torch.equal(result.state["w"], updates[int(np.argmin(scores))].tensors["w"])


def test_multi_krum_averages_all_but_f_leaving_the_outliers_out(make_update, deltas):
    updates = _honest_and_outlier(make_update, [-10.0, -10.0])
    updates.append(make_update("z-second", {"w": [30.0, -30.0]}))

    result = get_strategy("multi_krum")(
        {"w": torch.zeros(2)}, deltas(updates), _spec("multi_krum", num_byzantine=2), {}
    )

    honest_mean = torch.stack([u.tensors["w"] for u in updates[:5]]).mean(dim=0)
    assert torch.allclose(result.state["w"], honest_mean, rtol=1e-6)


def test_multi_krum_weighs_the_selected_updates_equally_whatever_their_example_counts(
    make_update, deltas
):
    values = [[1.0], [1.5], [0.5], [1.25], [0.75]]
    counts = [1, 10_000, 1, 1, 1]
    updates = [
        make_update(f"c{i}", {"w": v}, num_examples=n)
        for i, (v, n) in enumerate(zip(values, counts, strict=True))
    ]

    result = get_strategy("multi_krum")(
        {"w": torch.zeros(1)}, deltas(updates), _spec("multi_krum", num_byzantine=1), {}
    )

    # c1 (1.5) and c2 (0.5) tie for the worst score (0.3125, the others 0.125): m = n - f = 4
    # keeps c1, the earlier, and the four weigh a quarter each, c1's 10,000 examples aside.
    assert result.state["w"].item() == (1.0 + 1.5 + 1.25 + 0.75) / 4


def test_num_selected_above_n_minus_f_is_cut_to_n_minus_f(make_update, deltas):
    updates = _honest_and_outlier(make_update, [-10.0, -10.0])
    old = {"w": torch.zeros(2)}

    many = get_strategy("multi_krum")(
        old, deltas(updates), _spec("multi_krum", num_byzantine=1, num_selected=6), {}
    )
    default = get_strategy("multi_krum")(
        old, deltas(updates), _spec("multi_krum", num_byzantine=1), {}
    )

    assert torch.equal(many.state["w"], default.state["w"])


def test_multi_krum_of_one_is_krum(make_update, deltas):
    updates = _honest_and_outlier(make_update, [1.0, -40.0])
    old = {"w": torch.tensor([0.5, -0.5])}

    one = get_strategy("multi_krum")(
        old, deltas(updates), _spec("multi_krum", num_byzantine=1, num_selected=1), {}
    )
    krum = get_strategy("krum")(old, deltas(updates), _spec("krum", num_byzantine=1), {})

    assert torch.equal(one.state["w"], krum.state["w"])


def _blob(root: Path, name: str, values: list[float]) -> Path:
    path = root / f"{name}.safetensors"
    meta = DeltaMetadata(federation="fed_test", round=1, base_version="0" * 64, num_examples=1)
    save_file({"w": torch.tensor(values)}, str(path), metadata=meta.to_safetensors())
    return path


# Two updates tie for the lowest score (14: their two nearest are each other, 4, and one of
# c or d, 10); c and d score 20, e far more. Their client ids sort the other way round.
TIED = {"a": [1.0, 0.0], "b": [-1.0, 0.0], "c": [0.0, 3.0], "d": [0.0, -3.0], "e": [0.0, 10.0]}


@pytest.mark.parametrize(("first", "winner"), [("a", [1.0, 0.0]), ("b", [-1.0, 0.0])])
def test_a_tie_goes_to_the_update_first_by_sort_key_whatever_the_arrival_order(
    tmp_path, first, winner
):
    keys = {name: f"org-{name}" for name in TIED} | {first: "org-0"}
    inputs = [
        UpdateInput(f"client-{9 - i}", _blob(tmp_path, name, v), 1, sort_key=keys[name])
        for i, (name, v) in enumerate(TIED.items())
    ]
    spec = _spec("krum", num_byzantine=1)
    old = {"w": torch.zeros(2)}

    scores = krum_scores(pairwise_sq_distances(Contributions(BlobDeltas(inputs), spec), old), 1)
    results = [
        get_strategy("krum")(old, BlobDeltas(order), spec, {}) for order in (inputs, inputs[::-1])
    ]

    assert sorted(scores)[:3] == [14.0, 14.0, 20.0]
    for result in results:
        assert torch.equal(result.state["w"], torch.tensor(winner))


def test_select_returns_the_lowest_scores_in_update_order_ties_to_the_earlier():
    assert select([3.0, 1.0, 1.0, 0.5, 9.0], 1) == [3]
    assert select([3.0, 1.0, 1.0, 0.5, 9.0], 2) == [1, 3]
    assert select([2.0, 2.0, 2.0], 2) == [0, 1]
    assert select([float("inf"), 5.0, float("inf")], 2) == [0, 1]


def test_an_update_with_a_non_finite_value_is_never_selected(make_update, deltas):
    updates = _honest_and_outlier(make_update, [float("nan"), 0.0])

    result = get_strategy("krum")(
        {"w": torch.zeros(2)}, deltas(updates), _spec("krum", num_byzantine=1), {}
    )

    assert torch.isfinite(result.state["w"]).all()


@pytest.mark.parametrize("strategy", KRUMS)
@pytest.mark.parametrize(("n", "f"), [(4, 1), (3, 1), (1, 1), (6, 2)])
def test_a_round_of_at_most_2f_plus_2_updates_is_aggregated_by_the_median(
    make_update, deltas, caplog, strategy, n, f
):
    gen = torch.Generator().manual_seed(n)
    values = [torch.randn(5, generator=gen) for _ in range(n)]
    updates = [make_update(f"c{i}", {"w": v}) for i, v in enumerate(values)]
    old = {"w": torch.ones(5)}

    with caplog.at_level(logging.WARNING, logger="aggregator_service.aggregation.krum"):
        result = get_strategy(strategy)(old, deltas(updates), _spec(strategy, num_byzantine=f), {})
    median = get_strategy("median")(old, deltas(updates), AggregationSpec(strategy="median"), {})

    assert torch.equal(result.state["w"], median.state["w"])
    assert f"{n} updates cannot tolerate num_byzantine {f}" in caplog.text


def test_2f_plus_3_updates_run_krum_itself(make_update, deltas, caplog):
    updates = _honest_and_outlier(make_update, [-10.0, -10.0])[1:]  # 5 updates, f = 1

    with caplog.at_level(logging.WARNING):
        result = get_strategy("krum")(
            {"w": torch.zeros(2)}, deltas(updates), _spec("krum", num_byzantine=1), {}
        )

    assert "cannot tolerate" not in caplog.text
    assert any(torch.equal(result.state["w"], u.tensors["w"]) for u in updates[:-1])


@pytest.mark.parametrize("budget", [1, 7, 64])
def test_distances_streamed_in_small_slices_match_numpy_over_whole_updates(
    make_update, deltas, monkeypatch, budget
):
    gen = torch.Generator().manual_seed(3)
    shapes = {"a": (6, 5), "b": (11,), "c": (), "e": (0,)}
    values = [
        {k: torch.randn(s, generator=gen) * (i + 1) for k, s in shapes.items()} for i in range(6)
    ]
    updates = [make_update(f"c{i}", d) for i, d in enumerate(values)]
    like = {k: torch.zeros(s) for k, s in shapes.items()}
    monkeypatch.setattr(aggregation_base, "CHUNK_BUDGET", budget)

    got = pairwise_sq_distances(Contributions(deltas(updates), AggregationSpec()), like)

    flat = np.stack([np.concatenate([d[k].numpy().ravel() for k in sorted(d)]) for d in values])
    want = ((flat[:, None, :].astype(np.float64) - flat[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    assert torch.equal(got, got.T)
