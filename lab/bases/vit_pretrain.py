"""Supervised pre-training of a small transformers ViT: classify glyph images.

The model is `ViTForImageClassification` built from the architecture's
shipped config (seeded random init) with one output per glyph class, trained
with cross-entropy. It is saved with `save_pretrained` (safetensors) plus a
`preprocessor_config.json` holding ViTImageProcessor's defaults (mean = std =
0.5, bilinear), the preprocessing the product uses for it; the product loads
the directory with `from_pretrained` and replaces the glyph head by the
task's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from lab.bases.glyphs import CLASSES, GlyphBatch, GlyphData
from lab.bases.training import Log, Recipe, adamw, generator, run_steps
from shared.models.base import seeded
from shared.models.configs import hf_vit_config
from shared.models.synthetic import SyntheticBase

__all__ = ["pretrain_vit"]

MEAN = STD = (0.5, 0.5, 0.5)


def pretrain_vit(base: SyntheticBase, recipe: Recipe, dest: Path, log: Log) -> dict[str, Any]:
    """Train, `save_pretrained` into `dest`, return the held-out metrics."""
    config = _config(base.arch, recipe.data.image_size)
    with seeded(recipe.seed, "init"):
        model = ViTForImageClassification(config)
    data = GlyphData(recipe.data)
    optimizer = adamw(model, recipe, lambda name: "embeddings" in name, betas=(0.9, 0.999))

    def loss_of(batch: GlyphBatch) -> torch.Tensor:
        logits = model(pixel_values=_normalize(batch.images)).logits
        return F.cross_entropy(logits, batch.labels, label_smoothing=recipe.label_smoothing)

    run_steps(model, optimizer, data, recipe, log, loss_of)
    metrics = _evaluate(model, data, recipe)
    model.save_pretrained(dest, safe_serialization=True)
    side = int(recipe.data.image_size)
    processor = ViTImageProcessor(
        size={"height": side, "width": side},
        image_mean=list(MEAN),
        image_std=list(STD),
        resample=2,  # PIL bilinear, as the product resizes
    )
    processor.save_pretrained(dest)
    return metrics


def _config(arch: str, size: int) -> ViTConfig:
    shipped = hf_vit_config(arch)
    if shipped is None:
        raise ValueError(f"{arch!r} is not a FedTune ViT config in shared/model_configs")
    config = ViTConfig(**{k: v for k, v in shipped.items() if k != "model_type"})
    if config.image_size != size:
        raise ValueError(f"recipe data.image_size {size} is not {arch}'s image_size")
    config.num_labels = len(CLASSES)
    config.id2label = {i: f"{kind}:{name}" for i, (kind, name, _) in enumerate(CLASSES)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    return config


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def _evaluate(model: Any, data: GlyphData, recipe: Recipe) -> dict[str, Any]:
    """Top-1 glyph classification on a fresh seeded batch (all classes, and digits only)."""
    batch = data.sample(recipe.eval_samples, generator(recipe.seed, "eval"))
    logits = model(pixel_values=_normalize(batch.images)).logits
    predicted = logits.argmax(1)
    digits = sum(1 for kind, _, _ in CLASSES if kind == "digit")
    is_digit = batch.labels < digits
    digit_predicted = logits[is_digit, :digits].argmax(1)
    return {
        "held_out_samples": recipe.eval_samples,
        "accuracy": float((predicted == batch.labels).float().mean()),
        "accuracy_digits_10_way": float((digit_predicted == batch.labels[is_digit]).float().mean()),
        "metric": "glyph classification top-1 on a fresh seeded batch; digits also 10-way",
    }
