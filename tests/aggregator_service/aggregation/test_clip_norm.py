"""Per-update L2 clipping: bounds each whole delta, for every strategy, without touching blobs."""

from __future__ import annotations

import pytest
import torch

from aggregator_service.aggregation import STRATEGIES, get_strategy
from aggregator_service.aggregation.base import Contributions
from aggregator_service.aggregation.deltas import BlobDeltas
from shared.blobs import sha256_file
from shared.spec import AggregationSpec
from tests.aggregator_service.aggregation.conftest import write_blob


def test_a_delta_above_the_bound_is_scaled_to_it_across_all_its_tensors(make_update, deltas):
    # the whole delta is [3, 4] spread over two tensors: norm 5
    updates = [make_update("c1", {"a": [3.0], "b": [4.0]})]
    old = {"a": torch.tensor([0.0]), "b": torch.tensor([0.0])}

    result = get_strategy("fedavg")(old, deltas(updates), AggregationSpec(clip_norm=1.0), {})

    assert torch.allclose(result.state["a"], torch.tensor([0.6]), rtol=1e-6)
    assert torch.allclose(result.state["b"], torch.tensor([0.8]), rtol=1e-6)


def test_a_delta_within_the_bound_is_left_bit_identical(make_update, deltas):
    updates = [
        make_update("c1", {"w": [0.3, -0.1, 0.7]}, num_examples=3),
        make_update("c2", {"w": [0.2, 0.9, -0.4]}, num_examples=5),
    ]
    old = {"w": torch.tensor([1.0, 2.0, 3.0])}

    clipped = get_strategy("fedavg")(old, deltas(updates), AggregationSpec(clip_norm=1.5), {})
    plain = get_strategy("fedavg")(old, deltas(updates), AggregationSpec(), {})

    assert torch.equal(clipped.state["w"], plain.state["w"])


def test_clip_factors_are_computed_per_update(make_update, deltas):
    updates = [
        make_update("big", {"w": [30.0, 40.0]}),
        make_update("small", {"w": [0.3, 0.4]}),
    ]

    contributions = Contributions(deltas(updates), AggregationSpec(clip_norm=2.0))
    assert contributions.norms() == pytest.approx([50.0, 0.5])
    assert contributions.scales == pytest.approx([0.04, 1.0])


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_sees_the_clipped_delta(strategy, make_update, deltas):
    # the same delta from three clients: any aggregate of them is the delta itself
    updates = [make_update(f"c{i}", {"w": [6.0, 8.0]}) for i in range(3)]
    old = {"w": torch.tensor([0.0, 0.0])}
    spec = AggregationSpec(strategy=strategy, clip_norm=1.0)  # type: ignore[arg-type]
    unclipped = [make_update(f"d{i}", {"w": [0.6, 0.8]}) for i in range(3)]

    result = get_strategy(strategy)(old, deltas(updates), spec, {})
    reference = get_strategy(strategy)(
        old, deltas(unclipped), spec.model_copy(update={"clip_norm": None}), {}
    )

    assert torch.allclose(result.state["w"], reference.state["w"], rtol=1e-6, atol=1e-7)


def test_clipping_leaves_the_blob_and_later_reads_unchanged(make_update, tmp_path):
    update = write_blob(tmp_path, make_update("c1", {"w": [30.0, 40.0]}))
    before = sha256_file(update.path)
    clip = Contributions(BlobDeltas([update]), AggregationSpec(clip_norm=1.0))
    first = clip.mean("w", torch.zeros(2))
    second = clip.mean("w", torch.zeros(2))
    assert torch.allclose(first, torch.tensor([0.6, 0.8]))
    assert torch.equal(first, second)
    assert torch.equal(clip.deltas.tensor(0, "w"), torch.tensor([30.0, 40.0]))
    assert sha256_file(update.path) == before
