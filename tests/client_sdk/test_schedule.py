"""The local optimiser of a real round on the tiny ViT: the learning rate per step
(warmup, then constant or cosine, over the round's steps), gradient clipping and the
weight-decay groups."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from client_sdk.data import load_local_data
from client_sdk.training import LocalTrainer
from shared.spec import SpecError, parse_spec
from shared.tuning import build

CLASSES = ["cat", "dog"]
LR = 0.1


def _spec(**local_training: Any):
    return parse_spec(
        {
            "name": "t",
            "model": {"family": "hf_vit", "arch": "fedtune-tiny-vit", "pretrained": None},
            "task": {"classes": CLASSES},
            "method": {"name": "bias"},
            "local_training": {"epochs": 2, "batch_size": 2, "lr": LR, **local_training},
        }
    )


def _trainer(tmp_path: Path, spec) -> LocalTrainer:
    """6 training images: 3 steps per epoch at batch size 2."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        for i in range(4):
            path = tmp_path / "data" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(rng.normal(100 * c + 20 * i, 60, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
    data = load_local_data(tmp_path / "data", CLASSES)
    return LocalTrainer(spec, build(spec), data, device=torch.device("cpu"), val_fraction=0.25)


def _optimisers_seen(trainer: LocalTrainer) -> tuple[list[float], list[torch.optim.Optimizer]]:
    """Run a round, recording the learning rate each optimiser step runs at."""
    lrs: list[float] = []
    seen: list[torch.optim.Optimizer] = []

    def recording(optimizer, *rest):
        lrs.append(optimizer.param_groups[0]["lr"])
        seen.append(optimizer)
        return LocalTrainer._step(trainer, optimizer, *rest)

    trainer._step = recording  # type: ignore[method-assign]
    trainer.train(1)
    return lrs, seen


def _cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return LR * step / warmup
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_cosine_warms_up_then_decays_to_near_zero_over_the_round(tmp_path):
    trainer = _trainer(tmp_path, _spec(schedule="cosine", warmup_steps=2))

    lrs, _ = _optimisers_seen(trainer)

    assert len(lrs) == 6  # 2 epochs x 3 batches
    assert lrs == pytest.approx([_cosine(s, 2, 6) for s in range(6)])
    assert lrs[:3] == pytest.approx([0.0, LR / 2, LR])
    assert all(a > b for a, b in itertools.pairwise(lrs[2:]))
    assert lrs[-1] < 0.2 * LR


def test_the_schedule_spans_the_steps_left_by_max_steps(tmp_path):
    trainer = _trainer(tmp_path, _spec(schedule="cosine", warmup_steps=1, max_steps=4))

    lrs, _ = _optimisers_seen(trainer)

    assert lrs == pytest.approx([_cosine(s, 1, 4) for s in range(4)])


def test_constant_holds_lr_after_the_warmup(tmp_path):
    trainer = _trainer(tmp_path, _spec(warmup_steps=2))

    lrs, _ = _optimisers_seen(trainer)

    assert lrs == pytest.approx([0.0, LR / 2, LR, LR, LR, LR])


def test_every_round_restarts_the_schedule(tmp_path):
    trainer = _trainer(tmp_path, _spec(schedule="cosine", warmup_steps=2))

    first, _ = _optimisers_seen(trainer)
    second, _ = _optimisers_seen(trainer)

    assert second == pytest.approx(first)


def _update_norm(tmp_path: Path, max_grad_norm: float | None) -> float:
    spec = _spec(optimizer="sgd", momentum=0.0, lr=1.0, max_steps=1, max_grad_norm=max_grad_norm)
    trainer = _trainer(tmp_path, spec)
    start = trainer.bm.trainable_state()
    trainer.train(1)
    delta = trainer.delta(start)
    return float(torch.linalg.vector_norm(torch.cat([d.flatten() for d in delta.values()])))


def test_clipping_bounds_the_update_norm(tmp_path):
    unclipped = _update_norm(tmp_path, None)

    clipped = _update_norm(tmp_path, 1e-3)

    assert unclipped > 1e-2  # an SGD step at lr 1 moves by the gradient norm
    assert clipped == pytest.approx(1e-3, rel=1e-3)


def test_biases_and_norms_train_without_weight_decay(tmp_path):
    trainer = _trainer(tmp_path, _spec(weight_decay=0.05, max_steps=1))
    names = {id(p): n for n, p in trainer.model.named_parameters()}

    _, (optimizer, *_) = _optimisers_seen(trainer)

    groups = {
        g["name"]: (g["weight_decay"], {names[id(p)] for p in g["params"]})
        for g in optimizer.param_groups
    }
    assert groups["decay"] == (0.05, {"classifier.weight"})
    assert groups["no_decay"][0] == 0.0
    assert groups["no_decay"][1] == set(trainer.bm.trainable_names) - {"classifier.weight"}


def test_warmup_must_leave_steps_before_max_steps():
    with pytest.raises(SpecError, match="warmup_steps"):
        _spec(warmup_steps=4, max_steps=4)
