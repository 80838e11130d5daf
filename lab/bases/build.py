"""Building a self-made base: into a directory, or into the cache exactly once.

`build_base_to` pre-trains a base from its recipe into a directory, in the
same layout as the cache, and writes `provenance.json` last. `ensure_built`
puts a base into the cache: it builds into a temporary directory beside the
final one and renames it into place, under a file lock so that concurrent
callers build it once and a reader never sees a half-written base.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lab.bases.glyphs import GlyphData, data_description
from lab.bases.training import Log, Recipe, threads
from shared.blobs import sha256_file
from shared.models.synthetic import (
    PROVENANCE_FILE,
    SyntheticBase,
    cache_root,
    find_base,
    list_bases,
)

__all__ = ["build_base_to", "ensure_base", "ensure_built", "rebuild"]

Trainer = Callable[[SyntheticBase, Recipe, Path, Log], dict[str, Any]]


def _trainer(family: str) -> Trainer:
    if family == "open_clip":
        from lab.bases.clip_pretrain import pretrain_clip

        return pretrain_clip
    if family == "hf_vit":
        from lab.bases.vit_pretrain import pretrain_vit

        return pretrain_vit
    raise ValueError(f"no pre-training for model family {family!r}")


def _quiet(message: str) -> None:
    pass


def build_base_to(base: SyntheticBase, dest: Path, *, log: Log | None = print) -> dict[str, Any]:
    """Pre-train `base` into `dest` (weights, then provenance.json); return the provenance."""
    log = log or _quiet
    recipe = Recipe.parse(base.recipe)
    trainer = _trainer(base.family)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    log(f"building {base.arch}:{base.tag} (key {base.key}) into {dest}")
    if base.description:
        log(f"  {base.description}")
    log(
        f"  {recipe.steps} steps of {recipe.batch_size} glyph images, "
        f"{recipe.threads} compute thread(s) and one data thread; progress about every 30 s"
    )
    started = time.perf_counter()
    with threads(recipe.threads):
        metrics = trainer(base, recipe, dest, log)
    wall = time.perf_counter() - started
    provenance = _provenance(base, recipe, dest, metrics, wall)
    tmp = dest / (PROVENANCE_FILE + ".tmp")
    tmp.write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, dest / PROVENANCE_FILE)
    log(f"built {base.arch}:{base.tag} in {wall:.0f} s; held-out {_headline(metrics)}")
    return provenance


def _provenance(
    base: SyntheticBase, recipe: Recipe, dest: Path, metrics: dict[str, Any], wall: float
) -> dict[str, Any]:
    import open_clip
    import torch
    import transformers

    files = sorted(p for p in dest.iterdir() if p.is_file() and p.name != PROVENANCE_FILE)
    return {
        "name": f"{base.arch}:{base.tag}",
        "family": base.family,
        "arch": base.arch,
        "tag": base.tag,
        "key": base.key,
        "description": base.description,
        "recipe": base.recipe,
        "data": data_description(GlyphData(recipe.data)),
        "steps": recipe.steps,
        "seed": recipe.seed,
        "threads": recipe.threads,
        "wall_seconds": round(wall, 1),
        "held_out": metrics,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "transformers": transformers.__version__,
        },
        "sha256": {p.name: sha256_file(p) for p in files},
    }


def _headline(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """An exclusive lock on `path` where the OS has flock (True); elsewhere rename-wins (False)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield False
        return
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_built(base: SyntheticBase, *, root: Path | None = None, log: Log | None = print) -> Path:
    """The cached weights of `base`, building them first when they are not there."""
    log = log or _quiet
    if base.is_built(root):
        return base.weights_path(root)
    final = base.directory(root)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f"{final.name}.lock") as exclusive:
        if base.is_built(root):
            log(f"{base.arch}:{base.tag} was built meanwhile by another process")
            return base.weights_path(root)
        _install(base, final, log, exclusive)
    return base.weights_path(root)


def rebuild(base: SyntheticBase, *, root: Path | None = None, log: Log | None = print) -> Path:
    """Build `base` again and swap it into the cache (the old copy goes only once it is done)."""
    log = log or _quiet
    final = base.directory(root)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f"{final.name}.lock") as exclusive:
        _install(base, final, log, exclusive)
    return base.weights_path(root)


def _install(base: SyntheticBase, final: Path, log: Log, exclusive: bool) -> None:
    """Build into a temporary sibling of `final`, then rename it into place."""
    if exclusive:  # no other builder is running: these were left by builds that were killed
        for stale in final.parent.glob(f"{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
    try:
        build_base_to(base, tmp, log=log)
        if final.exists():
            old = final.with_name(f"{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_base(arch: str, tag: str, *, log: Log | None = print) -> Path:
    """The weights path of the registered base `tag` of `arch`, built into the cache if needed."""
    base = find_base(arch, tag)
    if base is None:
        known = ", ".join(f"{b.arch}:{b.tag}" for b in list_bases()) or "none"
        raise ValueError(f"no self-made base {tag!r} for {arch!r} (known: {known})")
    if not base.is_built() and log:
        log(f"{arch}:{tag} is not in {cache_root()} yet; building it once")
    return ensure_built(base, log=log)
