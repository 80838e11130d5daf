"""`fedtune-study build-base` and `fedtune-study bases`: build and list the self-made bases."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shared.models.synthetic import SyntheticBase, cache_root, find_base, list_bases

__all__ = ["add_commands"]


def add_commands(subparsers: Any) -> None:
    """Add `build-base` and `bases` to the `fedtune-study` command line."""
    build = subparsers.add_parser(
        "build-base",
        help="pre-train one of FedTune's self-made bases into the cache (once)",
        description="Pre-train a self-made base from its recipe, offline and deterministically, "
        "into $FEDTUNE_CACHE_DIR (default: the user cache directory). Takes up to about "
        "10 minutes on 2 CPU cores; a base already built is not built again.",
    )
    build.add_argument("--arch", required=True, help="architecture, e.g. fedtune-synth-clip")
    build.add_argument("--tag", required=True, help="base tag, e.g. fedtune-synth-v1")
    build.add_argument("--force", action="store_true", help="build again even if it is cached")
    build.set_defaults(handler=_build)
    listing = subparsers.add_parser(
        "bases", help="list the self-made bases, and whether each is built here"
    )
    listing.set_defaults(handler=_list)


def _fail(message: str) -> int:
    print(f"fedtune-study: {message}", file=sys.stderr)
    return 2


def _known() -> str:
    return ", ".join(f"--arch {b.arch} --tag {b.tag}" for b in list_bases()) or "none"


def _build(args: argparse.Namespace) -> int:
    from lab.bases.build import ensure_built, rebuild

    base = find_base(args.arch, args.tag)
    if base is None:
        return _fail(f"no self-made base {args.tag!r} for {args.arch!r}; known: {_known()}")
    if base.is_built() and not args.force:
        print(f"{base.arch}:{base.tag} is already built: {base.weights_path()}")
        return 0
    try:
        path = rebuild(base) if args.force else ensure_built(base)
    except (OSError, ValueError) as exc:
        return _fail(f"building {base.arch}:{base.tag} failed: {exc}")
    print(f"weights: {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    bases = list_bases()
    print(f"self-made bases (cache: {cache_root()})")
    for base in bases:
        print(_describe(base))
    if not bases:
        print("  none registered")
    return 0


def _describe(base: SyntheticBase) -> str:
    head = f"  {base.family:9} {base.arch} : {base.tag}  key {base.key}"
    if not base.is_built():
        return (
            f"{head}\n      not built; fedtune-study build-base --arch {base.arch} --tag {base.tag}"
        )
    try:
        prov = base.provenance()
    except (OSError, ValueError) as exc:
        return f"{head}\n      built at {base.directory()}, but its provenance is unreadable: {exc}"
    held_out = ", ".join(
        f"{k} {v:.3f}" for k, v in prov.get("held_out", {}).items() if isinstance(v, float)
    )
    return (
        f"{head}\n      built: {base.weights_path()}\n"
        f"      {prov.get('steps')} steps, seed {prov.get('seed')}, "
        f"{prov.get('threads')} compute thread(s), {prov.get('wall_seconds')} s; held-out {held_out}"
    )
