"""Deltas are read in place from their blobs, whatever the writer's alignment or the block size."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from aggregator_service.aggregation import STRATEGIES, get_strategy
from aggregator_service.aggregation import base as aggregation_base
from aggregator_service.aggregation.deltas import BlobDeltas, UpdateInput
from shared.blobs import Blob
from shared.spec import AggregationSpec


def _write_unaligned(path: Path, values: list[float]) -> None:
    """A valid safetensors file whose data starts at an odd offset (no header padding)."""
    data = struct.pack(f"<{len(values)}f", *values)
    header = {"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, len(data)]}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    if (8 + len(raw)) % 4 == 0:
        raw += b" "
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_a_delta_whose_data_is_not_aligned_is_read_correctly(tmp_path):
    path = tmp_path / "odd.safetensors"
    _write_unaligned(path, [1.5, -2.0, 4.0])

    assert torch.equal(Blob.open(path).tensor("w"), torch.tensor([1.5, -2.0, 4.0]))
    deltas = BlobDeltas([UpdateInput("c1", path, 1)])
    result = get_strategy("fedavg")({"w": torch.zeros(3)}, deltas, AggregationSpec(), {})
    assert torch.equal(result.state["w"], torch.tensor([1.5, -2.0, 4.0]))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_empty_tensors_aggregate_to_empty_tensors(strategy, make_update, deltas):
    updates = [make_update(f"c{i}", {"e": torch.zeros(2, 0), "w": [1.0]}) for i in range(3)]
    spec = AggregationSpec(strategy=strategy)  # type: ignore[arg-type]
    old = {"e": torch.zeros(2, 0), "w": torch.tensor([0.0])}

    result = get_strategy(strategy)(old, deltas(updates), spec, {})

    assert result.state["e"].shape == (2, 0)


def test_weighted_sum_is_bit_identical_whatever_the_block_size(make_update, monkeypatch, deltas):
    gen = torch.Generator().manual_seed(3)
    updates = [
        make_update(f"c{i}", {"w": torch.randn(1000, generator=gen)}, num_examples=3 + 7 * i)
        for i in range(6)
    ]
    old = {"w": torch.randn(1000, generator=gen)}
    whole = get_strategy("fedavg")(old, deltas(updates), AggregationSpec(), {})

    for block in (1, 7, 64, 999):
        monkeypatch.setattr(aggregation_base, "SUM_BLOCK", block)
        blocked = get_strategy("fedavg")(old, deltas(updates), AggregationSpec(), {})
        assert torch.equal(blocked.state["w"], whole.state["w"])
