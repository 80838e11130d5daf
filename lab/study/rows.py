"""results.csv rows as typed records, and the selections the tables and plots are drawn from.

A setting is measured once per seed; `mean_over_seeds` averages a selection's
seeds. When a cell was run again with different fields (another grid, more
rounds) the same (family, base, method, alpha, shots, mode, seed) can appear
twice; the later row wins.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lab.study.results import RESULTS_FILE, json_list, read_rows
from shared.methods import METHOD_NAMES

__all__ = [
    "Result",
    "alpha_value",
    "load_results",
    "lowest_alpha",
    "mean_over_seeds",
    "pick",
    "richest",
    "shots_value",
    "values",
]


def alpha_value(alpha: str) -> float:
    """For ordering: IID is alpha = ∞."""
    return float("inf") if alpha == "iid" else float(alpha)


def shots_value(shots: str) -> float:
    return float("inf") if shots == "all" else float(shots)


@dataclass(frozen=True)
class Result:
    family: str
    base: str
    method: str
    alpha: str
    shots: str
    mode: str
    seed: int
    final: float
    spread: float | None  # local: std over organisations
    low: float | None
    high: float | None
    curve: list[float]
    bytes_up: float
    bytes_down: float
    trainable: int
    wall_s: float

    @property
    def key(self) -> tuple[str, str, str, str, str, str, int]:
        return (self.family, self.base, self.method, self.alpha, self.shots, self.mode, self.seed)


def _opt(text: str) -> float | None:
    return float(text) if text else None


def load_results(out: Path) -> list[Result]:
    """Every usable row of `<out>/results.csv`, the later one of any repeated setting."""
    latest: dict[tuple[str, str, str, str, str, str, int], Result] = {}
    for row in read_rows(out / RESULTS_FILE):
        r = Result(
            family=row["family"],
            base=row["base"],
            method=row["method"],
            alpha=row["alpha"],
            shots=row["shots"],
            mode=row["mode"],
            seed=int(row["seed"]),
            final=float(row["final_accuracy"]),
            spread=_opt(row["final_accuracy_std"]),
            low=_opt(row["final_accuracy_min"]),
            high=_opt(row["final_accuracy_max"]),
            curve=[float(a) for a in json_list(row["round_accuracies"])],
            bytes_up=float(row["bytes_up_per_round"] or 0),
            bytes_down=float(row["bytes_down_per_round"] or 0),
            trainable=int(row["trainable_params"] or 0),
            wall_s=float(row["wall_s"] or 0),
        )
        latest[r.key] = r
    return list(latest.values())


def lowest_alpha(results: Iterable[Result]) -> str | None:
    alphas = {r.alpha for r in results}
    return min(alphas, key=alpha_value) if alphas else None


def pick(results: Iterable[Result], **where: str) -> list[Result]:
    return [r for r in results if all(getattr(r, k) == v for k, v in where.items())]


def mean_over_seeds(results: Iterable[Result], **where: str) -> float | None:
    """Mean final accuracy of the matching rows (over seeds), or None if none match."""
    values = [r.final for r in pick(results, **where)]
    return statistics.fmean(values) if values else None


def values(results: Iterable[Result], field: str) -> list[str]:
    """The distinct values of a field, in a sensible order."""
    found = {getattr(r, field) for r in results}
    order = {"alpha": alpha_value, "shots": shots_value}.get(field)
    if order is not None:
        return sorted(found, key=order)
    preferred = {
        "family": ["open_clip", "hf_vit"],
        "base": ["pretrained", "random"],
        "mode": ["federated", "local"],
        "method": list(METHOD_NAMES),
    }.get(field, [])
    return [v for v in preferred if v in found] + sorted(found - set(preferred))


def richest(results: Iterable[Result], axis: str, other: str) -> str | None:
    """The value of `other` measured at the most levels of `axis` (ties: the first in order)."""
    rows = list(results)
    options = values(rows, other)
    if not options:
        return None
    return max(options, key=lambda o: len(values(pick(rows, **{other: o}), axis)))
