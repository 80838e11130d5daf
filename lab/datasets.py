"""Evaluation data for the lab: a labelled image set, a held-out split, organisations' shares.

The built-in set is scikit-learn's handwritten digits (8x8, upscaled to 32x32
RGB); a user's ImageFolder (`<class>/<image>`) works the same way. Shares
follow the usual federated-learning recipe: per class, a Dirichlet(α) draw
splits that class's examples across organisations (α → ∞ is IID, small α is
strongly non-IID); every organisation is guaranteed a minimum number of
examples. Few-shot keeps `shots` examples per class of the training pool
before it is split. Every draw comes from a generator seeded by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DIGIT_CLASSES",
    "DIGIT_PROMPT",
    "LabeledImages",
    "dirichlet_shares",
    "few_shot",
    "load_digits",
    "load_image_folder",
    "split_held_out",
    "write_image_folders",
]

DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_PROMPT = "a photo of the digit {}."
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Dirichlet draws are repeated until every organisation holds at least this many examples.
MIN_SHARE = 10


@dataclass(frozen=True)
class LabeledImages:
    """Images (RGB, PIL) with integer labels into `classes`."""

    images: list[Image.Image]
    labels: list[int]
    classes: list[str]

    def subset(self, indices: Sequence[int]) -> LabeledImages:
        return LabeledImages(
            [self.images[i] for i in indices], [self.labels[i] for i in indices], self.classes
        )

    def __len__(self) -> int:
        return len(self.labels)


def _digit_image(pixels: np.ndarray, size: int) -> Image.Image:
    gray = (pixels.reshape(8, 8) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return (
        Image.fromarray(gray, mode="L")
        .resize((size, size), Image.Resampling.BILINEAR)
        .convert("RGB")
    )


def load_digits(size: int = 32) -> LabeledImages:
    """scikit-learn's 1,797 handwritten digits, upscaled to `size` x `size` RGB."""
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    images = [_digit_image(row, size) for row in digits.data]
    return LabeledImages(images, [int(t) for t in digits.target], list(DIGIT_CLASSES))


def load_image_folder(root: Path) -> LabeledImages:
    """An ImageFolder: one sub-folder per class (sorted names are the classes)."""
    if not root.is_dir():
        raise ValueError(f"dataset: {root} is not a directory of class folders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"dataset: {root} needs at least two class folders, found {len(classes)}")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
                labels.append(label)
    if not labels:
        raise ValueError(f"dataset: no images under {root}")
    return LabeledImages(images, labels, classes)


def split_held_out(
    labels: Sequence[int], fraction: float, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices), stratified by class."""
    train, test = [], []
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    for y in sorted(by_class):
        idx = rng.permutation(by_class[y]).tolist()
        cut = round(len(idx) * fraction)
        test += idx[:cut]
        train += idx[cut:]
    return sorted(train), sorted(test)


def few_shot(
    indices: Sequence[int], labels: Sequence[int], shots: int | None, rng: np.random.Generator
) -> list[int]:
    """Keep `shots` examples per class (all of them for None)."""
    if shots is None:
        return list(indices)
    kept: list[int] = []
    for y in sorted({labels[i] for i in indices}):
        idx = [i for i in indices if labels[i] == y]
        kept += rng.permutation(idx)[:shots].tolist()
    return sorted(kept)


def dirichlet_shares(
    indices: Sequence[int],
    labels: Sequence[int],
    n_orgs: int,
    alpha: float | None,
    rng: np.random.Generator,
    *,
    min_share: int = MIN_SHARE,
) -> list[list[int]]:
    """Split `indices` across `n_orgs`: per class Dirichlet(α); α None means IID."""
    if alpha is None:
        order = rng.permutation(list(indices)).tolist()
        return [sorted(order[k::n_orgs]) for k in range(n_orgs)]
    floor = min(min_share, len(indices) // n_orgs)
    classes = sorted({labels[i] for i in indices})
    for _ in range(1000):
        shares: list[list[int]] = [[] for _ in range(n_orgs)]
        for y in classes:
            idx = rng.permutation([i for i in indices if labels[i] == y])
            cuts = (np.cumsum(rng.dirichlet([alpha] * n_orgs)) * len(idx)).astype(int)[:-1]
            for share, part in zip(shares, np.split(idx, cuts), strict=True):
                share += part.tolist()
        if min(len(s) for s in shares) >= floor:
            return [sorted(s) for s in shares]
    raise ValueError(
        f"cannot give each of {n_orgs} organisations {floor} examples with alpha={alpha}"
    )


def write_image_folders(
    root: Path, data: LabeledImages, shares: dict[str, Sequence[int]]
) -> dict[str, Path]:
    """One ImageFolder per organisation under `root/<org>/data` (PNG files)."""
    dirs = {}
    for org, idx in shares.items():
        folder = root / org / "data"
        for i in idx:
            path = folder / data.classes[data.labels[i]] / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            data.images[i].save(path)
        dirs[org] = folder
    return dirs
