"""Per-update L2 clipping: bounds each whole delta, for every strategy, without touching blobs."""

from __future__ import annotations

import pytest
import torch

from aggregator_service.aggregation import STRATEGIES, get_strategy
from aggregator_service.aggregation.base import open_deltas
from shared.blobs import sha256_file
from shared.spec import AggregationSpec


def test_a_delta_above_the_bound_is_scaled_to_it_across_all_its_tensors(write_delta):
    # the whole delta is [3, 4] spread over two tensors: norm 5
    updates = [write_delta("c1", {"a": [3.0], "b": [4.0]})]
    old = {"a": torch.tensor([0.0]), "b": torch.tensor([0.0])}

    result = get_strategy("fedavg")(old, updates, AggregationSpec(clip_norm=1.0), {})

    assert torch.allclose(result.state["a"], torch.tensor([0.6]), rtol=1e-6)
    assert torch.allclose(result.state["b"], torch.tensor([0.8]), rtol=1e-6)


def test_a_delta_within_the_bound_is_left_bit_identical(write_delta):
    updates = [
        write_delta("c1", {"w": [0.3, -0.1, 0.7]}, num_examples=3),
        write_delta("c2", {"w": [0.2, 0.9, -0.4]}, num_examples=5),
    ]
    old = {"w": torch.tensor([1.0, 2.0, 3.0])}

    clipped = get_strategy("fedavg")(old, updates, AggregationSpec(clip_norm=1.5), {})
    plain = get_strategy("fedavg")(old, updates, AggregationSpec(), {})

    assert torch.equal(clipped.state["w"], plain.state["w"])


def test_clip_factors_are_computed_per_update(write_delta):
    updates = [
        write_delta("big", {"w": [30.0, 40.0]}),
        write_delta("small", {"w": [0.3, 0.4]}),
    ]

    with open_deltas(updates, AggregationSpec(clip_norm=2.0)) as deltas:
        assert deltas.norms() == pytest.approx([50.0, 0.5])
        assert deltas.scales == pytest.approx([0.04, 1.0])


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_sees_the_clipped_delta(strategy, write_delta):
    # the same delta from three clients: any aggregate of them is the delta itself
    updates = [write_delta(f"c{i}", {"w": [6.0, 8.0]}) for i in range(3)]
    old = {"w": torch.tensor([0.0, 0.0])}
    spec = AggregationSpec(strategy=strategy, clip_norm=1.0)  # type: ignore[arg-type]
    unclipped = [write_delta(f"d{i}", {"w": [0.6, 0.8]}) for i in range(3)]

    result = get_strategy(strategy)(old, updates, spec, {})
    reference = get_strategy(strategy)(
        old, unclipped, spec.model_copy(update={"clip_norm": None}), {}
    )

    assert torch.allclose(result.state["w"], reference.state["w"], rtol=1e-6, atol=1e-7)


def test_clipping_leaves_the_blob_and_later_reads_unchanged(write_delta):
    update = write_delta("c1", {"w": [30.0, 40.0]})
    before = sha256_file(update.path)

    with open_deltas([update], AggregationSpec(clip_norm=1.0)) as deltas:
        first = deltas.tensor(0, "w").clone()
        second = deltas.tensor(0, "w")
        raw = deltas.raw(0, "w")

    assert torch.allclose(first, torch.tensor([0.6, 0.8]))
    assert torch.equal(first, second)
    assert torch.equal(raw, torch.tensor([30.0, 40.0]))
    assert sha256_file(update.path) == before
