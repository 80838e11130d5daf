"""Local pre-trained checkpoints the tests write themselves, as `model.pretrained` names them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import ViTConfig, ViTForImageClassification

from shared.models.configs import hf_vit_config

# ImageNet's statistics, as a real ViT checkpoint's preprocessor_config.json states them:
# not ViTImageProcessor's defaults (0.5), so a model that ignores the file shows it
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def write_vit_checkpoint(
    directory: Path, seed: int = 0, processor: dict[str, Any] | None = None
) -> Path:
    """`save_pretrained` of a seeded fedtune-tiny-vit, with `processor` as its
    preprocessor_config.json when given."""
    torch.manual_seed(seed)
    values = hf_vit_config("fedtune-tiny-vit")
    assert values is not None
    config = ViTConfig(**{k: v for k, v in values.items() if k != "model_type"})
    config.num_labels = 3
    ViTForImageClassification(config).save_pretrained(directory)
    if processor is not None:
        text = json.dumps({"image_processor_type": "ViTImageProcessor", **processor})
        (directory / "preprocessor_config.json").write_text(text, encoding="utf-8")
    return directory
