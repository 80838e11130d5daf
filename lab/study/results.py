"""results.csv: one row per finished cell, appended and fsynced as each cell finishes.

A study killed mid-write can leave a torn last line; `repair` cuts the file
back to its last complete line before anything is appended, and `read_rows`
ignores rows that do not have every column. Lists (per-round accuracies and
bytes, per-organisation accuracies) are JSON in their column, so plots and
tables are drawn from this file alone.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CELL_COLUMNS",
    "COLUMNS",
    "METRIC_COLUMNS",
    "ResultsError",
    "append_row",
    "curve_columns",
    "done_ids",
    "json_list",
    "read_rows",
    "repair",
]

RESULTS_FILE = "results.csv"

CELL_COLUMNS = [
    "cell_id", "family", "arch", "base", "pretrained", "method", "method_options", "train_head",
    "alpha", "shots", "mode", "seed", "organisations", "rounds", "local_epochs", "batch_size",
    "optimizer", "lr", "weight_decay", "dataset", "test_fraction", "prompt_template",
]  # fmt: skip
METRIC_COLUMNS = [
    "final_accuracy",  # federated: the global model; local: mean over organisations
    "final_accuracy_std",  # local: spread over organisations (population std); federated: empty
    "final_accuracy_min",
    "final_accuracy_max",
    "best_accuracy",  # best of rounds 0..R (round 0 = before any training)
    "rounds_to_90",  # first round reaching 90 % of the final accuracy
    "round_accuracies",  # JSON list, rounds 0..R (local: mean over organisations)
    "org_accuracies",  # JSON list, local: each organisation's final accuracy
    "org_examples",  # JSON list, examples each organisation holds
    "bytes_up_per_round",  # mean over rounds of update bytes received by the server
    "bytes_down_per_round",  # mean over rounds 2..R of bytes served (round 1 adds the base)
    "round_bytes_up",  # JSON list per round
    "round_bytes_down",  # JSON list per round
    "trainable_params",
    "total_params",
    "test_examples",
    "wall_s",
    "finished_at",
]
COLUMNS = CELL_COLUMNS + METRIC_COLUMNS


class ResultsError(ValueError):
    """A results.csv this version cannot append to."""


def repair(path: Path) -> int:
    """Cut a torn last line (no trailing newline); returns the bytes removed."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with path.open("r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return len(data) - keep


def read_rows(path: Path) -> list[dict[str, str]]:
    """Complete rows only (a torn or short line is skipped)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames and list(reader.fieldnames) != COLUMNS:
        missing = [c for c in COLUMNS if c not in reader.fieldnames]
        if missing:
            raise ResultsError(
                f"{path}: written by another version (no column {missing[0]!r}); "
                "use a new --out directory"
            )
    return [
        row
        for row in reader
        if None not in row and all(row.get(c) is not None for c in COLUMNS) and row["cell_id"]
    ]


def done_ids(path: Path) -> set[str]:
    return {row["cell_id"] for row in read_rows(path)}


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append one row (the header first if the file is new) and fsync it."""
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise ResultsError(f"row has unknown column {unknown[0]!r}")
    repair(path)
    new = not path.exists() or path.stat().st_size == 0
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    if new:
        writer.writeheader()
    writer.writerow({c: _cell_text(row.get(c)) for c in COLUMNS})
    with path.open("a", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


def json_list(text: str) -> list[Any]:
    """A JSON-list column; empty for an empty cell."""
    if not text:
        return []
    value = json.loads(text)
    return value if isinstance(value, list) else []


def curve_columns(curve: list[float]) -> dict[str, Any]:
    """final, best and rounds-to-90 % of a per-round accuracy curve (rounds 0..R)."""
    final = curve[-1]
    return {
        "final_accuracy": final,
        "best_accuracy": max(curve),
        "rounds_to_90": next(r for r, acc in enumerate(curve) if acc >= 0.9 * final),
        "round_accuracies": list(curve),
    }
