"""The study's data: the dataset loaded once, held-out splits and organisations' shares.

The held-out test set depends only on the dataset and the seed, so every cell
of a seed is scored on the same images. An organisation's share depends on
(dataset, seed, alpha, shots, organisations) and is drawn from a generator
seeded by exactly that, so the federated and the local-only cell of a setting
train on the same images. Shares are written once as ImageFolders (what
`fedtune-client train --data` reads) under `<out>/data/<setting key>/org-<k>/data`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lab.datasets import (
    LabeledImages,
    dirichlet_shares,
    few_shot,
    load_digits,
    load_image_folder,
    split_held_out,
    write_image_folders,
)
from lab.study.cells import Setting

__all__ = ["StudyData", "load_dataset", "seeded_rng"]


def seeded_rng(purpose: str, *parts: Any) -> np.random.Generator:
    """A numpy generator seeded by `purpose` and `parts` (stable across runs and machines)."""
    blob = json.dumps([purpose, *parts], sort_keys=True, default=str).encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(blob).digest()[:8], "big"))


def load_dataset(dataset: str | None, image_size: int) -> LabeledImages:
    """`digits` (scikit-learn's, upscaled) or a user's ImageFolder."""
    if dataset in (None, "digits"):
        return load_digits(image_size)
    return load_image_folder(Path(dataset).expanduser())


class StudyData:
    """One dataset for a whole study; see the module docstring for what depends on what."""

    def __init__(self, images: LabeledImages, root: Path) -> None:
        self.images, self.root = images, root
        self._splits: dict[tuple[str, float, int], tuple[list[int], list[int]]] = {}

    @property
    def classes(self) -> list[str]:
        return list(self.images.classes)

    def split(self, setting: Setting) -> tuple[list[int], list[int]]:
        """(training pool, held-out test) indices for the setting's seed."""
        key = (setting.dataset, setting.test_fraction, setting.seed)
        if key not in self._splits:
            rng = seeded_rng("held-out", *key)
            self._splits[key] = split_held_out(self.images.labels, setting.test_fraction, rng)
        return self._splits[key]

    def test(self, setting: Setting) -> LabeledImages:
        return self.images.subset(self.split(setting)[1])

    def shares(self, setting: Setting) -> list[list[int]]:
        """Each organisation's indices: few-shot of the pool, then Dirichlet(alpha) shares."""
        pool, _ = self.split(setting)
        rng = seeded_rng("shares", setting.key)
        labels = self.images.labels
        kept = few_shot(pool, labels, setting.shots, rng)
        return dirichlet_shares(kept, labels, setting.organisations, setting.alpha, rng)

    def org_folders(self, setting: Setting) -> list[Path]:
        """The organisations' ImageFolders, written on first use (atomically, by rename)."""
        final = self.root / setting.key
        if not (final / "shares.json").exists():
            shares = self.shares(setting)
            tmp = self.root / f".{setting.key}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            named: dict[str, Sequence[int]] = {f"org-{k + 1}": s for k, s in enumerate(shares)}
            write_image_folders(tmp, self.images, named)
            (tmp / "shares.json").write_text(
                json.dumps({"setting": asdict(setting), "shares": named}) + "\n"
            )
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        return [final / f"org-{k + 1}" / "data" for k in range(setting.organisations)]
