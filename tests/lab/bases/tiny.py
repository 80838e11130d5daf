"""Tiny versions of the registered bases: the real recipes, cut to seconds of work."""

from __future__ import annotations

import dataclasses

from shared.models.synthetic import SyntheticBase, find_base

TAG = "fedtune-synth-v1"
ARCHS = {"open_clip": "fedtune-synth-clip", "hf_vit": "fedtune-tiny-vit"}


def tiny_base(family: str, *, steps: int = 6, seed: int = 0) -> SyntheticBase:
    """The registered base of `family` with a recipe small enough for a test."""
    base = find_base(ARCHS[family], TAG)
    assert base is not None, f"{ARCHS[family]}:{TAG} is not registered"
    data = {**base.recipe["data"], "fonts": base.recipe["data"]["fonts"][:2]}
    recipe = {
        **base.recipe,
        "data": data,
        "steps": steps,
        "batch_size": 16,
        "warmup_steps": 2,
        "eval_samples": 32,
        "threads": 1,
        "seed": seed,
    }
    return dataclasses.replace(base, recipe=recipe)
