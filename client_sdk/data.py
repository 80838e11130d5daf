"""Local data: an ImageFolder directory or a `path,label` CSV, mapped onto the spec's classes.

Labels always follow the federation's class order, whatever order folders or
rows come in; a folder or label that is not one of the spec's classes is an
error that names it. Loading lists files only: images are decoded lazily, in
the DataLoader's worker processes, and nothing decoded is kept. An unreadable
image is met when a batch asks for it: it is left out of that batch, never
fatal, and the trainer counts it (`skipped_images` in the round's metrics).

Augmentation is reproducible: each sample's random transform draws from
torch's RNG seeded by (the epoch's augmentation seed, the sample's index), so it
depends neither on batch order nor on which worker loads it. The seed travels
with the index (`SeededBatchSampler` yields `(index, seed)` keys), so workers
that persist across epochs and rounds still see each epoch's own seed.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from client_sdk._exceptions import FedTuneError

__all__ = [
    "DataError",
    "ImageDataset",
    "LocalData",
    "SeededBatchSampler",
    "collate_readable",
    "default_num_workers",
    "derive_seed",
    "load_local_data",
    "make_loader",
    "split_train_val",
]

log = logging.getLogger("client_sdk")

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
# DataLoader workers when not told: one core is left to the training loop, and past
# about eight workers decoding is rarely what limits a single device.
MAX_AUTO_WORKERS = 8
# Batches each worker prepares ahead of the one being consumed.
PREFETCH_FACTOR = 4


class DataError(FedTuneError):
    """Local data that cannot be used as given."""


@dataclass
class LocalData:
    """Image files `(path, label)` in the spec's label order (not yet decoded)."""

    source: Path
    samples: list[tuple[Path, int]]

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
    return LocalData(source=path, samples=candidates)


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


Key = int | tuple[int, int | None]
# One sample as a worker returns it: (image or None when unreadable, label, index).
Item = tuple[torch.Tensor | None, int, int]


class ImageDataset(torch.utils.data.Dataset[Item]):
    """`(transform(image), label, index)`, decoded on demand; `None` for an unreadable image.

    A key is an index or `(index, augment_seed)`. With a seed (the key's, else
    the `augment_seed` attribute), sample `i`'s transform runs with torch's CPU
    RNG seeded from (seed, i), its previous state restored after. Without one,
    the transform draws from torch's global RNG as it stands.
    """

    augment_seed: int | None = None

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Key) -> Item:
        i, seed = key if isinstance(key, tuple) else (key, self.augment_seed)
        file, label = self.samples[i]
        image = _decode(file)
        if image is None:
            return None, label, i
        if seed is None:
            return self.transform(image), label, i
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, i))
            return self.transform(image), label, i


def collate_readable(items: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Stack the readable samples; name the unreadable ones by index."""
    kept = [(x, y) for x, y, _ in items if x is not None]
    skipped = [i for x, _, i in items if x is None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept]), skipped


class SeededBatchSampler(torch.utils.data.Sampler[list[tuple[int, int | None]]]):
    """Batches of `(index, augment_seed)` keys for one epoch at a time.

    `set_epoch(order_seed, augment_seed)` fixes the next pass: a permutation
    drawn from `order_seed` (None: in order) and the seed every key carries.
    With `world > 1` the global batch of `batch_size` is cut into `world`
    contiguous parts and this `rank` gets its part, so the ranks together see
    exactly the batches one process would, in as many steps; a part may be
    empty (a last global batch smaller than `world`).
    """

    def __init__(self, n: int, batch_size: int, *, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.order_seed: int | None = None
        self.augment_seed: int | None = None

    def set_epoch(self, order_seed: int | None, augment_seed: int | None) -> None:
        self.order_seed, self.augment_seed = order_seed, augment_seed

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int | None]]]:
        if self.order_seed is None:
            order = list(range(self.n))
        else:
            generator = torch.Generator().manual_seed(self.order_seed)
            order = torch.randperm(self.n, generator=generator).tolist()
        for start in range(0, self.n, self.batch_size):
            batch = order[start : start + self.batch_size]
            lo = self.rank * len(batch) // self.world
            hi = (self.rank + 1) * len(batch) // self.world
            yield [(i, self.augment_seed) for i in batch[lo:hi]]


def default_num_workers(world: int = 1) -> int:
    """Worker processes per training process: its share of the cores less one, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(MAX_AUTO_WORKERS, math.floor(cores / world) - 1))


def make_loader(
    dataset: ImageDataset,
    sampler: SeededBatchSampler,
    *,
    num_workers: int,
    pin_memory: bool,
) -> torch.utils.data.DataLoader[Item]:
    """A DataLoader whose workers (if any) persist for the loader's life and prefetch."""
    workers = num_workers > 0
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_readable,
        # Workers' base seeds come from here, not from torch's global RNG: an iterator's
        # start would otherwise draw from it (once with persistent workers, once an epoch
        # without), and dropout, drawing from it too, would depend on the worker count.
        generator=torch.Generator().manual_seed(0),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=workers,
        prefetch_factor=PREFETCH_FACTOR if workers else None,
    )
