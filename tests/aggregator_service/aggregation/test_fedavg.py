"""FedAvg against hand-computed means: example weighting, uniform weighting, transport dtypes."""

from __future__ import annotations

import pytest
import torch

from aggregator_service.aggregation import get_strategy
from shared.spec import AggregationSpec


def test_fedavg_weights_deltas_by_examples(make_update, deltas):
    updates = [
        make_update("c1", {"w": [1.0, 2.0], "b": [4.0]}, num_examples=1),
        make_update("c2", {"w": [3.0, 6.0], "b": [0.0]}, num_examples=3),
    ]
    old = {"w": torch.tensor([10.0, 0.0]), "b": torch.tensor([-1.0])}

    result = get_strategy("fedavg")(old, deltas(updates), AggregationSpec(max_weight_share=1), {})

    # w: 0.25 * [1, 2] + 0.75 * [3, 6] = [2.5, 5]; b: 0.25 * 4 = 1
    assert torch.equal(result.state["w"], torch.tensor([12.5, 5.0]))
    assert torch.equal(result.state["b"], torch.tensor([0.0]))
    assert result.server_state == {}


def test_fedavg_uniform_weighting_ignores_example_counts(make_update, deltas):
    updates = [
        make_update("c1", {"w": [1.0, 2.0]}, num_examples=1),
        make_update("c2", {"w": [3.0, 6.0]}, num_examples=3),
    ]
    old = {"w": torch.tensor([10.0, 0.0])}

    result = get_strategy("fedavg")(old, deltas(updates), AggregationSpec(weighting="uniform"), {})

    assert torch.equal(result.state["w"], torch.tensor([12.0, 4.0]))


def test_fedavg_leaves_the_global_state_it_was_given_untouched(make_update, deltas):
    updates = [make_update("c1", {"w": [1.0]})]
    old = {"w": torch.tensor([2.0])}

    get_strategy("fedavg")(old, deltas(updates), AggregationSpec(), {})

    assert torch.equal(old["w"], torch.tensor([2.0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_deltas_are_averaged_in_float32(make_update, dtype, deltas):
    updates = [
        make_update("c1", {"w": [0.5, 1024.0]}, dtype=dtype),
        make_update("c2", {"w": [1.5, 1.0]}, dtype=dtype),
    ]
    old = {"w": torch.tensor([0.0, 0.0])}

    result = get_strategy("fedavg")(old, deltas(updates), AggregationSpec(weighting="uniform"), {})

    assert result.state["w"].dtype == torch.float32
    assert torch.equal(result.state["w"], torch.tensor([1.0, 512.5]))


def test_global_state_dtype_is_kept(make_update, deltas):
    updates = [make_update("c1", {"w": [0.5]})]
    old = {"w": torch.tensor([1.0], dtype=torch.float64)}

    result = get_strategy("fedavg")(old, deltas(updates), AggregationSpec(), {})

    assert result.state["w"].dtype == torch.float64
    assert torch.equal(result.state["w"], torch.tensor([1.5], dtype=torch.float64))
