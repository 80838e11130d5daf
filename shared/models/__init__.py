"""Model families: how a spec's `model` section becomes a `VisionClassifier`."""

from __future__ import annotations

from collections.abc import Callable

import torch

from shared.families import Family
from shared.models.base import Preprocess, TextTower, VisionClassifier, seeded
from shared.models.hf_vit_family import build_hf_vit
from shared.models.open_clip_family import build_open_clip
from shared.spec import FederationSpec

__all__ = [
    "FAMILIES",
    "FamilyBuilder",
    "Preprocess",
    "TextTower",
    "VisionClassifier",
    "build_family",
    "seeded",
]

FamilyBuilder = Callable[..., VisionClassifier]

# family name -> builder(spec, *, load_weights: bool, device: torch.device)
FAMILIES: dict[Family, FamilyBuilder] = {
    "open_clip": build_open_clip,
    "hf_vit": build_hf_vit,
}


def build_family(
    spec: FederationSpec, *, load_weights: bool, device: torch.device
) -> VisionClassifier:
    """Build the classifier for `spec.model.family` (base init seeded from `spec.seed`)."""
    with seeded(spec.seed, "base"), device:
        return FAMILIES[spec.model.family](spec, load_weights=load_weights, device=device)
