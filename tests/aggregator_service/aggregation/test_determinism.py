"""Every strategy: the same bits whatever the arrival order, and across a restart between rounds."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from aggregator_service.aggregation import STRATEGIES, get_strategy
from shared.blobs import atomic_save_state, encode_state, read_state
from shared.spec import AggregationSpec

ALL = sorted(STRATEGIES)
SHAPES = {"blocks.0.bias": (7,), "blocks.0.attn.lora_A": (4, 9), "head.weight": (3, 5)}


def _random_round(make_update, round_no: int, n: int = 5) -> list:
    gen = torch.Generator().manual_seed(1000 * round_no)
    return [
        make_update(
            f"r{round_no}-client-{i:02d}",
            {k: torch.randn(s, generator=gen) * (i + 1) for k, s in SHAPES.items()},
            num_examples=int(torch.randint(1, 500, (1,), generator=gen)),
        )
        for i in range(n)
    ]


def _initial_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return {k: torch.randn(s, generator=gen) for k, s in SHAPES.items()}


def _spec(strategy: str) -> AggregationSpec:
    return AggregationSpec(strategy=strategy, clip_norm=8.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", ALL)
def test_result_is_bit_identical_whatever_the_order_of_updates(strategy, make_update, deltas):
    updates = _random_round(make_update, 1)
    old = _initial_state()
    results = [
        get_strategy(strategy)(old, deltas(list(order)), _spec(strategy), {})
        for order in itertools.islice(itertools.permutations(updates), 0, None, 17)
    ]

    first = results[0]
    for other in results[1:]:
        assert encode_state(other.state) == encode_state(first.state)
        assert encode_state(other.server_state) == encode_state(first.server_state)


@pytest.mark.parametrize("strategy", ALL)
def test_restart_between_rounds_from_stored_state_gives_the_same_bits(
    strategy, make_update, tmp_path: Path, deltas
):
    aggregate = get_strategy(strategy)
    spec = _spec(strategy)
    round1, round2 = _random_round(make_update, 1), _random_round(make_update, 2)

    # uninterrupted: round 2 straight from round 1's in-memory results
    r1 = aggregate(_initial_state(), deltas(round1), spec, {})
    straight = aggregate(r1.state, deltas(round2), spec, r1.server_state)

    # restarted: round 1's results go through blobs on disk, as the service stores them
    atomic_save_state(tmp_path / "state-1.safetensors", r1.state)
    atomic_save_state(tmp_path / "server-state-1.safetensors", r1.server_state)
    del r1
    restarted = aggregate(
        read_state(tmp_path / "state-1.safetensors"),
        deltas(round2),
        spec,
        read_state(tmp_path / "server-state-1.safetensors"),
    )

    assert encode_state(restarted.state) == encode_state(straight.state)
    assert encode_state(restarted.server_state) == encode_state(straight.server_state)
