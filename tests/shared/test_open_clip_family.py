"""The open_clip family's zero-shot head is part of the frozen base: with `base_source: local`
every client computes it and must reach the service's fingerprint, whatever its thread count."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from shared.spec import parse_spec
from shared.tuning import build


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_zero_shot_head_has_the_same_bits_on_one_thread_and_on_two(restore_threads) -> None:
    """ViT-B-32's text tower is wide enough for float32 sums to depend on the thread count
    (a head computed in float32 differs here); the base fingerprints must not."""
    spec = parse_spec(
        {
            "name": "threads",
            "model": {"family": "open_clip", "arch": "ViT-B-32", "pretrained": None},
            "task": {"classes": ["airplane", "bird", "cat", "deer", "dog", "frog", "ship"]},
            "method": {"name": "bias"},
        }
    )
    heads, prints = [], []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        bm = build(spec)
        heads.append(bm.base_state()["head.weight"])
        prints.append(bm.base_fingerprint())
        del bm

    assert heads[0].dtype == torch.float32
    assert torch.equal(heads[0], heads[1])
    assert prints[0] == prints[1]
