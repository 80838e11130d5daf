"""The study loop: plan the cells still to run, run each, append its row, show progress.

A cell whose id is already in `results.csv` is done; a restarted study runs
only the others. One `fedtune-server serve` process (data in `<out>/server`)
hosts every federated cell's federation and is stopped at the end, also on
Ctrl-C or SIGTERM. A cell that fails is reported and left out of the CSV, so
the next run retries it; the others go on.
"""

from __future__ import annotations

import contextlib
import fnmatch
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lab.local_federation import ServerProcess, quiet_env, start_server
from lab.study.cells import Cell
from lab.study.federated import run_federated
from lab.study.local import run_local
from lab.study.results import RESULTS_FILE, append_row, done_ids, repair
from lab.study.shares import StudyData
from shared.models.synthetic import find_base

__all__ = ["Plan", "StudyOptions", "ensure_bases", "plan", "run_study"]

Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """The grid's cells split into those with a row in results.csv and those without."""

    cells: list[Cell]
    done: list[Cell]
    pending: list[Cell]


def select(cells: list[Cell], patterns: list[str]) -> list[Cell]:
    """Cells whose id matches any of the shell-style patterns (all cells for none)."""
    if not patterns:
        return cells
    return [c for c in cells if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]


def plan(cells: list[Cell], out: Path) -> Plan:
    """Which cells still need running; repairs a torn last line of results.csv first."""
    results = out / RESULTS_FILE
    repair(results)
    finished = done_ids(results)
    return Plan(
        cells,
        [c for c in cells if c.id in finished],
        [c for c in cells if c.id not in finished],
    )


@dataclass
class StudyOptions:
    out: Path
    device: str = "cpu"
    threads: int = 1
    say: Say = print
    failures: list[tuple[Cell, str]] = field(default_factory=list)


def ensure_bases(cells: list[Cell], say: Say = print) -> None:
    """Build (once) every self-made base the cells name; say how long a first build took."""
    wanted = sorted({(c.arch, c.pretrained) for c in cells if c.pretrained is not None})
    for arch, tag in wanted:
        base = find_base(arch, tag)
        if base is None:
            continue
        if base.is_built():
            say(f"base {arch}:{tag}: cached in {base.directory()}")
            continue
        from lab.bases import ensure_base

        started = time.perf_counter()
        ensure_base(arch, tag, log=lambda m: say(f"  {m}"))
        say(f"base {arch}:{tag}: first build took {time.perf_counter() - started:.0f} s")


@contextlib.contextmanager
def _server_if_needed(cells: list[Cell], out: Path, say: Say) -> Iterator[ServerProcess | None]:
    if not any(c.mode == "federated" for c in cells):
        yield None
        return
    started = time.perf_counter()
    server = start_server(out / "server", env=quiet_env(threads=1))
    say(
        f"aggregator: {server.url} (data in {out / 'server'}, up in {time.perf_counter() - started:.1f} s)"
    )
    try:
        yield server
    finally:
        server.stop()


def _eta(walls: list[float], remaining: int) -> str:
    if not walls or not remaining:
        return "done" if not remaining else "ETA ?"
    seconds = statistics.fmean(walls) * remaining
    return f"ETA {seconds / 60:.0f} min" if seconds >= 90 else f"ETA {seconds:.0f} s"


def run_cell(
    cell: Cell, server: ServerProcess | None, data: StudyData, opts: StudyOptions
) -> dict[str, Any]:
    """One cell → its full results row (cell fields and metrics)."""
    if cell.mode == "federated":
        assert server is not None
        metrics = run_federated(cell, server, data, opts.out / "work", opts.device)
    else:
        metrics = run_local(cell, data, opts.device)
    return {
        "cell_id": cell.id,
        **cell.fields(),
        **metrics,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_study(the_plan: Plan, data: StudyData, opts: StudyOptions) -> int:
    """Run the pending cells in order; returns how many failed."""
    say, total = opts.say, len(the_plan.cells)
    torch.set_num_threads(opts.threads)
    walls: list[float] = []
    with _server_if_needed(the_plan.pending, opts.out, say) as server:
        for i, cell in enumerate(the_plan.pending):
            n = len(the_plan.done) + i + 1
            started = time.perf_counter()
            try:
                row = run_cell(cell, server, data, opts)
            except Exception as exc:
                opts.failures.append((cell, f"{type(exc).__name__}: {exc}"))
                print(f"[{n}/{total}] {cell.label()}: FAILED: {exc}", file=sys.stderr, flush=True)
                continue
            append_row(opts.out / RESULTS_FILE, row)
            walls.append(time.perf_counter() - started)
            eta = _eta(walls, len(the_plan.pending) - i - 1)
            say(
                f"[{n}/{total}] {cell.label()}: {row['final_accuracy']:.3f} "
                f"({walls[-1]:.0f} s) — {eta}"
            )
    return len(opts.failures)
