"""Synthetic image folders for the tests: one folder per class, 32x32 PNGs drawn from a seed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["colour", "textured", "write_image_folder"]

# A class's (and image's) mean pixel: one grey level, or an RGB triple.
Mean = float | np.ndarray


def colour(c: int, _i: int) -> Mean:
    """Each class a colour of its own (an RGB mean)."""
    return np.array([(40 * c) % 256, (90 * c + 60) % 256, (150 * c + 30) % 256])


def textured(c: int, i: int) -> Mean:
    """A grey level per class and image, for tests whose random crops must differ."""
    return 100 * c + 20 * i


def write_image_folder(
    root: Path,
    classes: Sequence[str],
    per_class: int,
    *,
    seed: int = 0,
    mean: Callable[[int, int], Mean] = colour,
    std: float = 25.0,
) -> Path:
    """Write `per_class` noisy images (normal around `mean(class, image)`) under root/<class>/."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        for i in range(per_class):
            pixels = np.clip(mean(c, i) + rng.normal(0, std, (32, 32, 3)), 0, 255)
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
    return root
