"""Self-made pre-trained bases: how a spec names one and where its weights live.

Where no model hub is reachable, FedTune pre-trains small bases itself (the
lab's builder, `fedtune-study build-base`). A spec names one like any open_clip
tag, e.g. `{family: open_clip, arch: fedtune-synth-clip, pretrained:
fedtune-synth-v1}`. This module is the contract between the builder and
whoever loads weights: the recipes (everything that determines the weights:
data, steps, seed), the content hash that keys the cache, and the lookup from
a name to the files on disk. It never builds anything; a base that is not
built yet is a one-line error that says how to build it.

Recipes are data in `shared/model_configs/bases/<arch>--<tag>.json`. The cache
lives in `$FEDTUNE_CACHE_DIR` (default: the user's cache directory) as
`bases/<tag>/<arch>-<key>/`, holding the weights in the family's own format
and `provenance.json`, which the builder writes last: a directory without it
is not a base.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import platformdirs

from shared.models.configs import CONFIG_DIR

__all__ = [
    "BASES_DIR",
    "PROVENANCE_FILE",
    "SyntheticBase",
    "cache_root",
    "find_base",
    "list_bases",
    "resolve_pretrained",
]

BASES_DIR = CONFIG_DIR / "bases"
PROVENANCE_FILE = "provenance.json"
# open_clip loads a checkpoint file; transformers loads a save_pretrained directory.
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
# Bump when the builder changes in a way that changes the weights for the same recipe.
BUILDER_FORMAT = 1


def cache_root() -> Path:
    """`$FEDTUNE_CACHE_DIR`, else the user's cache directory for fedtune."""
    env = os.environ.get("FEDTUNE_CACHE_DIR")
    return Path(env) if env else Path(platformdirs.user_cache_dir("fedtune"))


@dataclass(frozen=True)
class SyntheticBase:
    """One self-made base: an architecture, a tag and the recipe that builds it."""

    family: str
    arch: str
    tag: str
    recipe: dict[str, Any]
    description: str = ""

    @property
    def key(self) -> str:
        """Content hash of everything that determines the weights (16 hex digits)."""
        blob = json.dumps(
            {
                "format": BUILDER_FORMAT,
                "family": self.family,
                "arch": self.arch,
                "tag": self.tag,
                "recipe": self.recipe,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def directory(self, root: Path | None = None) -> Path:
        return (root or cache_root()) / "bases" / self.tag / f"{self.arch}-{self.key}"

    def weights_path(self, root: Path | None = None) -> Path:
        """What the family's loader takes: a checkpoint file (open_clip) or a directory."""
        d = self.directory(root)
        return d / OPEN_CLIP_WEIGHTS if self.family == "open_clip" else d

    def is_built(self, root: Path | None = None) -> bool:
        return (self.directory(root) / PROVENANCE_FILE).is_file()

    def provenance(self, root: Path | None = None) -> dict[str, Any]:
        """What the builder recorded: data, steps, seed, sha256 of the weights, timings."""
        data: dict[str, Any] = json.loads(
            (self.directory(root) / PROVENANCE_FILE).read_text(encoding="utf-8")
        )
        return data


@cache
def _registry() -> dict[tuple[str, str], SyntheticBase]:
    bases = {}
    for path in sorted(BASES_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        base = SyntheticBase(
            family=data["family"],
            arch=data["arch"],
            tag=data["tag"],
            recipe=data["recipe"],
            description=data.get("description", ""),
        )
        bases[(base.arch, base.tag)] = base
    return bases


def list_bases() -> list[SyntheticBase]:
    """Every self-made base FedTune knows how to build."""
    return list(_registry().values())


def find_base(arch: str, tag: str | None) -> SyntheticBase | None:
    """The self-made base `tag` of `arch`, or None when it names something else."""
    return None if tag is None else _registry().get((arch, tag))


def is_synthetic_tag(tag: str | None) -> bool:
    return tag is not None and any(b.tag == tag for b in _registry().values())


def resolve_pretrained(family: str, arch: str, pretrained: str | None) -> str | None:
    """Map a self-made base's name to its weights on disk; pass anything else through.

    Raises ValueError (one line, naming the field) for a self-made tag that does
    not fit the architecture or that is not built on this machine yet.
    """
    base = find_base(arch, pretrained)
    if base is None:
        if is_synthetic_tag(pretrained):
            fits = sorted(f"{b.arch}" for b in _registry().values() if b.tag == pretrained)
            raise ValueError(
                f"model.pretrained: the self-made base {pretrained!r} exists for "
                f"{', '.join(fits)}, not for model.arch {arch!r}"
            )
        return pretrained
    if base.family != family:
        raise ValueError(
            f"model.pretrained: {pretrained!r} of {arch!r} is an {base.family} base, not {family}"
        )
    if not base.is_built():
        raise ValueError(
            f"model.pretrained: the self-made base {pretrained!r} of {arch!r} is not built "
            f"in {cache_root()}; build it once with `fedtune-study build-base --arch {arch} "
            f"--tag {pretrained}` (or set FEDTUNE_CACHE_DIR to where it was built)"
        )
    return str(base.weights_path())
