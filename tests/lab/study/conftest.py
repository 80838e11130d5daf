"""Tiny grids for the study's tests, and tiny self-made bases built in seconds."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.models.synthetic import find_base

CLIP_ARCH = "fedtune-synth-clip"
VIT_ARCH = "fedtune-tiny-vit"
TAG = "fedtune-synth-v1"


def _tiny_base(arch: str, dest: Path) -> str | None:
    """A base of `arch` pre-trained for a few steps; its weights path, or None without a builder."""
    base = find_base(arch, TAG)
    if base is None:
        return None
    try:
        from lab.bases import build_base_to
    except ImportError:
        return None
    small = dataclasses.replace(
        base,
        tag="study-test",
        recipe={
            **base.recipe, "steps": 10, "warmup_steps": 2, "batch_size": 16, "eval_samples": 32,
            "threads": 1,
        },
    )  # fmt: skip
    build_base_to(small, dest, log=None)
    return str(dest / "open_clip_model.safetensors" if arch == CLIP_ARCH else dest)


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """{family: weights path of a few-step base, or None when no builder is available}."""
    logging.getLogger().addFilter(
        lambda r: not str(r.msg).startswith("No pretrained weights loaded")
    )
    root = tmp_path_factory.mktemp("bases")
    return {
        "open_clip": _tiny_base(CLIP_ARCH, root / "clip"),
        "hf_vit": _tiny_base(VIT_ARCH, root / "vit"),
    }


GridFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def make_grid() -> GridFactory:
    """`make_grid(weights=None, **fields)`: a grid dict of small cells (see `tiny_grid`)."""
    return tiny_grid


def tiny_grid(weights: dict[str, str | None] | None = None, **overrides: Any) -> dict[str, Any]:
    """Small cells: 2 organisations, 2 rounds, 5 shots per class, bias tuning, CLIP.

    `weights` ({family: path}) are the pre-trained bases; without them cells use random init.
    """
    weights = weights or {}
    grid: dict[str, Any] = {
        "name": "tiny",
        "organisations": 2,
        "rounds": 2,
        "local_epochs": 1,
        "batch_size": 16,
        "models": {
            "open_clip": {"arch": CLIP_ARCH, "pretrained": weights.get("open_clip")},
            "hf_vit": {"arch": VIT_ARCH, "pretrained": weights.get("hf_vit")},
        },
        "method_settings": {"bias": {"lr": 0.01}},
        "families": ["open_clip"],
        "bases": ["pretrained"] if weights.get("open_clip") else ["random"],
        "methods": ["bias"],
        "alphas": [0.1],
        "shots": [5],
        "modes": ["federated", "local"],
    }
    grid.update(overrides)
    return grid
