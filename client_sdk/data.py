"""Local data: an ImageFolder directory or a `path,label` CSV, mapped onto the spec's classes.

Labels always follow the federation's class order, whatever order folders or
rows come in. Unreadable images are skipped and counted, never fatal; a folder
or label that is not one of the spec's classes is an error that names it.

Augmentation is reproducible: with an `augment_seed`, each sample's random
transform draws from torch's RNG seeded by (that seed, the sample's index), so
it depends neither on batch order nor on which DataLoader worker loads it.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from client_sdk._exceptions import FedTuneError

__all__ = [
    "DataError",
    "ImageDataset",
    "LocalData",
    "derive_seed",
    "load_local_data",
    "split_train_val",
]

log = logging.getLogger("client_sdk")

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
# Decoded images are kept in memory while they fit this budget (bytes of RGB pixels).
CACHE_BUDGET_BYTES = 256 << 20


class DataError(FedTuneError):
    """Local data that cannot be used as given."""


@dataclass
class LocalData:
    """Readable samples `(path, label)` in the spec's label order, and what was skipped."""

    source: Path
    samples: list[tuple[Path, int]]
    skipped: list[Path] = field(default_factory=list)
    images: dict[Path, Image.Image] = field(default_factory=dict, repr=False)

    def class_counts(self, classes: Sequence[str]) -> dict[str, int]:
        counts = Counter(label for _, label in self.samples)
        return {classes[i]: counts[i] for i in sorted(counts)}


def load_local_data(path: str | Path, classes: Sequence[str]) -> LocalData:
    """Read an ImageFolder dir (`<class>/<image>`) or a CSV of `path,label`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"data path {path} must be a directory of class folders or a .csv")
        candidates = _from_csv(path, classes)
    else:
        candidates = _from_folders(path, classes)
    if not candidates:
        raise DataError(
            f"data path {path} holds no images (expected <class>/<image> folders named after "
            f"the federation's classes: {', '.join(classes)})"
        )
    data = LocalData(source=path, samples=[])
    used = 0
    for file, label in candidates:
        image = _decode(file)
        if image is None:
            data.skipped.append(file)
            continue
        data.samples.append((file, label))
        size = image.width * image.height * 3
        if used + size <= CACHE_BUDGET_BYTES:
            data.images[file] = image
            used += size
    if data.skipped:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(data.skipped), data.skipped[0])
    if not data.samples:
        raise DataError(f"none of the {len(candidates)} images under {path} could be read")
    return data


def _decode(file: Path) -> Image.Image | None:
    try:
        with Image.open(file) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def _from_folders(root: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    index = {c: i for i, c in enumerate(classes)}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in folders if p.name not in index]
    if unknown:
        raise DataError(
            f"class folders not in the federation's classes: {', '.join(unknown)} "
            f"(expected some of: {', '.join(classes)})"
        )
    samples = []
    for folder in folders:
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                samples.append((file, index[folder.name]))
    return samples


def _from_csv(file: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    index = {c: i for i, c in enumerate(classes)}
    samples, unknown = [], set()
    try:
        with file.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read CSV {file}: {exc}") from None
    for n, row in enumerate(rows, start=1):
        if not row or (n == 1 and [c.strip().lower() for c in row] == ["path", "label"]):
            continue
        if len(row) != 2:
            raise DataError(f"{file}:{n}: expected two columns `path,label`, got {len(row)}")
        rel, label = row[0].strip(), row[1].strip()
        if label not in index:
            unknown.add(label)
            continue
        samples.append((file.parent / rel, index[label]))
    if unknown:
        raise DataError(
            f"labels in {file} not in the federation's classes: {', '.join(sorted(unknown))} "
            f"(expected some of: {', '.join(classes)})"
        )
    return samples


def split_train_val(
    samples: Sequence[tuple[Path, int]], val_fraction: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Seeded split; the validation part is empty when `val_fraction` is 0 or data is tiny."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    order = list(samples)
    random.Random(seed).shuffle(order)
    n_val = int(len(order) * val_fraction)
    if n_val >= len(order):
        n_val = len(order) - 1
    return order[n_val:], order[:n_val]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' text (sha256), the same on every machine and run."""
    text = ":".join(["fedtune", *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class ImageDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """`(transform(image), label)` pairs, served from the decode cache when possible.

    With `augment_seed` set, sample `i`'s transform runs with torch's CPU RNG
    seeded from (augment_seed, i), its previous state restored after; the
    trainer sets a new seed each epoch. Worker processes get the attribute with
    the dataset when an epoch's iterator starts. Without it, the transform
    draws from torch's global RNG as it stands.
    """

    augment_seed: int | None = None

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Callable[[Image.Image], torch.Tensor],
        cache: dict[Path, Image.Image] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache or {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        file, label = self.samples[i]
        image = self.cache.get(file)
        if image is None:
            image = _decode(file)
            if image is None:
                raise DataError(f"image {file} became unreadable during training")
        if self.augment_seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.augment_seed, i))
            return self.transform(image), label
