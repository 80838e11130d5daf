"""Two CPU processes on gloo train the same round one process would: the same delta, and
the same training figures."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from client_sdk.data import load_local_data
from client_sdk.distributed import DistributedTrainer, follow, init_process_group, spawn, wrap
from client_sdk.training import LocalTrainer
from shared.spec import parse_spec
from shared.tuning import build
from tests.images import textured, write_image_folder

CLASSES = ["cat", "dog"]


def _spec():
    # Shuffling and augmentation stay on: both are seeded per sample, whatever the rank.
    return parse_spec(
        {
            "name": "t",
            "model": {"family": "hf_vit", "arch": "fedtune-tiny-vit", "pretrained": None},
            "task": {"classes": CLASSES},
            "method": {"name": "bias"},
            # SGD: Adam would turn float noise in a zero gradient (key biases) into ±lr.
            "local_training": {"epochs": 2, "batch_size": 4, "lr": 0.1, "optimizer": "sgd"},
        }
    )


def _folder(root: Path) -> Path:
    """Textured images (a random crop of a flat one would not show)."""
    return write_image_folder(root, CLASSES, 4, mean=textured, std=60)


def _trainer(root: Path, rank: int = 0, world: int = 1) -> LocalTrainer:
    spec = _spec()
    data = load_local_data(root, CLASSES)
    return LocalTrainer(
        spec,
        build(spec),
        data,
        device=torch.device("cpu"),
        val_fraction=0,
        organisation="org-a",
        num_workers=0,
        rank=rank,
        world=world,
    )


def _rank_main(rank: int, world: int, root: Path, out: Path) -> None:
    torch.set_num_threads(1)
    control = init_process_group(rank, world, "cpu")
    try:
        trainer = _trainer(root, rank, world)
        start = trainer.bm.trainable_state()
        wrap(trainer)
        if rank == 0:
            lead = DistributedTrainer(trainer, control)
            stats = lead.train(1)
            lead.stop()
            save_file(trainer.delta(start), str(out))
            out.with_suffix(".json").write_text(json.dumps(asdict(stats)))
        else:
            follow(trainer, control)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_the_single_process_delta(tmp_path):
    root = _folder(tmp_path / "data")
    out = tmp_path / "ddp.safetensors"

    spawn(_rank_main, 2, root, out)

    single = _trainer(root)
    start = single.bm.trainable_state()
    stats = single.train(1)
    expected = single.delta(start)
    got = load_file(str(out))
    assert sorted(got) == sorted(expected)
    assert any(float(v.abs().sum()) > 0 for v in expected.values())
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-6)
    figures = json.loads(out.with_suffix(".json").read_text())
    assert (figures["seen"], figures["correct"], figures["steps"]) == (
        stats.seen,
        stats.correct,
        stats.steps,
    )
    assert figures["loss_sum"] == pytest.approx(stats.loss_sum, rel=1e-4)
