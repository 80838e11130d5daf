"""`fedtune-study run` and `fedtune-study report`: the study as one command.

    fedtune-study run --preset quick --out results/quick
    fedtune-study run --grid my-grid.yaml --out results/mine --dry-run
    fedtune-study run --preset paper --dataset ~/data/cifar10 --out results/paper
    fedtune-study report --out results/quick

`run` skips every cell already in `<out>/results.csv`, so the same command
resumes a study that was stopped. `report` redraws summary.md and the plots
from results.csv alone. Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from lab.study.cells import Cell, expand
from lab.study.grid import PRESETS, Grid, GridError, load_grid, load_preset
from lab.study.report import write_report
from lab.study.results import RESULTS_FILE, ResultsError, read_rows
from lab.study.runner import Plan, StudyOptions, ensure_bases, plan, run_study, select
from lab.study.shares import StudyData, load_dataset

__all__ = ["add_commands"]


class _Fail(Exception):
    """A one-line error for stderr."""


def add_commands(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run",
        help="run a study grid (resumes: cells already in results.csv are skipped)",
        description="Run every cell of a grid and write results.csv, summary.md and plots.",
    )
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--grid", type=Path, help="grid YAML file")
    source.add_argument("--preset", choices=PRESETS, help="a grid shipped with FedTune")
    run.add_argument("--out", type=Path, required=True, help="results directory")
    run.add_argument("--dataset", help="ImageFolder to use instead of the grid's dataset")
    run.add_argument(
        "--cells", action="append", default=[], metavar="PATTERN",
        help="run only cells whose id matches this shell pattern (repeatable)",
    )  # fmt: skip
    run.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    run.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    run.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: the small bases gain nothing from more, and on a shared "
        "machine two OpenMP threads stalled up to 20x)",
    )  # fmt: skip
    run.set_defaults(handler=_guarded(_run))
    report = subparsers.add_parser(
        "report",
        help="redraw summary.md and the plots from results.csv",
        description="Redraw summary.md and the plots of a study from its results.csv alone.",
    )
    report.add_argument("--out", type=Path, required=True, help="results directory")
    report.set_defaults(handler=_guarded(_report))


def _guarded(fn: Any) -> Any:
    def handler(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except (_Fail, GridError, ResultsError) as exc:
            print(f"fedtune-study: {exc}", file=sys.stderr)
            return 2

    return handler


def _grid(args: argparse.Namespace) -> Grid:
    grid = load_preset(args.preset) if args.preset else load_grid(args.grid)
    if args.dataset:
        if not Path(args.dataset).expanduser().is_dir():
            raise _Fail(f"--dataset: {args.dataset} is not a directory of class folders")
        grid = grid.model_copy(update={"dataset": args.dataset})
    return grid


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise _Fail(f"--device: {name!r} is not auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise _Fail("--device cuda: no CUDA device is available")
    return name


def _dry_run(the_plan: Plan, out: Path) -> int:
    done = {c.id for c in the_plan.done}
    for cell in the_plan.cells:
        print(f"{'done   ' if cell.id in done else 'pending'}  {cell.id}  {cell.label()}")
    fed = sum(c.mode == "federated" for c in the_plan.cells)
    print(
        f"{len(the_plan.cells)} cells ({fed} federated, {len(the_plan.cells) - fed} local): "
        f"{len(the_plan.done)} done, {len(the_plan.pending)} to run"
    )
    walls = [float(r["wall_s"]) for r in read_rows(out / RESULTS_FILE) if r["wall_s"]]
    if walls and the_plan.pending:
        eta = sum(walls) / len(walls) * len(the_plan.pending)
        print(f"estimate from the {len(walls)} cells run so far: about {eta / 60:.0f} min")
    return 0


def _quiet_libraries() -> None:
    """The study builds random-init bases on purpose and loads heads of a new size."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger().addFilter(
        lambda r: not str(r.msg).startswith("No pretrained weights loaded")
    )


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    grid = _grid(args)
    cells: list[Cell] = select(expand(grid), args.cells)
    if not cells:
        raise _Fail(f"--cells: no cell id matches {' or '.join(args.cells)} (see --dry-run)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    the_plan = plan(cells, out)
    if args.dry_run:
        return _dry_run(the_plan, out)
    if grid.dataset is None:
        raise _Fail(f"dataset: grid {grid.name} names none; pass --dataset PATH (an ImageFolder)")
    device = _device(args.device)
    _quiet_libraries()
    print(
        f"study {grid.name}: {len(cells)} cells, {len(the_plan.done)} already in "
        f"{out / RESULTS_FILE}, {len(the_plan.pending)} to run on {device}",
        flush=True,
    )
    started = time.perf_counter()
    opts = StudyOptions(out=out, device=device, threads=args.threads)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        ensure_bases(the_plan.pending)
        data = StudyData(_dataset(grid), out / "data")
        failed = run_study(the_plan, data, opts)
    except KeyboardInterrupt:
        print(
            f"fedtune-study: interrupted after {time.perf_counter() - started:.0f} s; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    except (ValueError, RuntimeError, OSError) as exc:
        raise _Fail(str(exc).splitlines()[0]) from None
    print(f"study {grid.name}: ran {len(the_plan.pending) - failed} cells in "
          f"{(time.perf_counter() - started) / 60:.1f} min")  # fmt: skip
    _print_written(write_report(out))
    for cell, why in opts.failures:
        print(f"fedtune-study: cell {cell.id} failed: {why}", file=sys.stderr)
    return 1 if failed else 0


def _dataset(grid: Grid) -> Any:
    try:
        return load_dataset(grid.dataset, grid.image_size)
    except ValueError as exc:
        raise _Fail(str(exc)) from None


def _print_written(paths: list[Path]) -> None:
    for path in paths:
        print(f"wrote {path}")


def _report(args: argparse.Namespace) -> int:
    if not (args.out / RESULTS_FILE).exists():
        raise _Fail(f"--out: no {RESULTS_FILE} in {args.out}")
    _print_written(write_report(args.out))
    return 0
