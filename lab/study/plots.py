"""The study's figures as PNG files (matplotlib, Agg backend), drawn from results.csv alone.

- accuracy_per_round.png: held-out accuracy after each round, one line per
  method, one panel per family (pre-trained base, federated, lowest alpha).
- accuracy_vs_bytes.png: the same curves against bytes communicated (log x):
  update bytes up plus state bytes down per round, the one-time download of the
  frozen base left out (it is the same for every method of a family).
- federated_vs_local.png: federated accuracy beside the local-only mean (error
  bar: min to max over organisations) at the lowest alpha.
- accuracy_vs_shots.png: accuracy against shots per class, one line per method
  and mode, one panel per family (pre-trained base, at the alpha measured with
  the most shot levels).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lab.study.findings import reference
from lab.study.rows import Result, mean_over_seeds, pick, richest, values

__all__ = ["write_plots"]

DPI = 110


def _panels(n: int, width: float = 5.0, columns: int = 2) -> tuple[Any, list[Any]]:
    """A figure of `n` panels, at most `columns` side by side."""
    cols = max(1, min(n, columns))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 4 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _accuracy_panel(ax: Any, title: str, xlabel: str, grid: str = "major") -> None:
    """Title and labels of a panel of held-out accuracy curves, a light grid, the legend."""
    ax.set(title=title, xlabel=xlabel, ylabel="held-out accuracy")
    ax.grid(alpha=0.3, which=grid)
    _legend(ax)


def _curves(results: Sequence[Result], alpha: str, shots: str) -> dict[str, list[Result]]:
    fed = pick(results, base="pretrained", mode="federated", alpha=alpha, shots=shots)
    return {f: pick(fed, family=f) for f in values(fed, "family")}


def plot_rounds(results: Sequence[Result], alpha: str, shots: str, path: Path) -> Path:
    curves = _curves(results, alpha, shots)
    fig, axes = _panels(len(curves))
    for ax, (family, rows) in zip(axes, curves.items(), strict=False):
        for r in sorted(rows, key=lambda r: (r.method, r.seed)):
            ax.plot(range(len(r.curve)), r.curve, marker=".", label=f"{r.method} (seed {r.seed})")
        _accuracy_panel(ax, f"{family}: pre-trained, federated, α={alpha}", "round")
    return _save(fig, path)


def plot_bytes(results: Sequence[Result], alpha: str, shots: str, path: Path) -> Path:
    curves = _curves(results, alpha, shots)
    fig, axes = _panels(len(curves))
    for ax, (family, rows) in zip(axes, curves.items(), strict=False):
        for r in sorted(rows, key=lambda r: (r.method, r.seed)):
            per_round = r.bytes_up + r.bytes_down
            xs = [per_round * k for k in range(1, len(r.curve))]
            if xs and per_round > 0:
                ax.plot(xs, r.curve[1:], marker=".", label=f"{r.method} (seed {r.seed})")
        ax.set_xscale("log")
        _accuracy_panel(
            ax,
            f"{family}: pre-trained, federated, α={alpha}",
            "bytes communicated (up + down, base excluded)",
            grid="both",
        )
    return _save(fig, path)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def plot_federated_vs_local(results: Sequence[Result], alpha: str, shots: str, path: Path) -> Path:
    at = pick(results, alpha=alpha, shots=shots)
    groups = [(f, b) for f in values(at, "family") for b in values(at, "base")]
    fig, axes = _panels(len(groups), width=5.5)
    for ax, (family, base) in zip(axes, groups, strict=False):
        sel = pick(at, family=family, base=base)
        methods = values(sel, "method")
        xs = range(len(methods))
        fed = [mean_over_seeds(sel, method=m, mode="federated") or 0.0 for m in methods]
        loc_rows = [pick(sel, method=m, mode="local") for m in methods]
        loc = [sum(r.final for r in rows) / len(rows) if rows else 0.0 for rows in loc_rows]
        low = [min((_or(r.low, r.final) for r in rows), default=0.0) for rows in loc_rows]
        high = [max((_or(r.high, r.final) for r in rows), default=0.0) for rows in loc_rows]
        err = [[max(m - lo, 0) for m, lo in zip(loc, low, strict=True)],
               [max(hi - m, 0) for m, hi in zip(loc, high, strict=True)]]  # fmt: skip
        ax.bar([x - 0.2 for x in xs], fed, width=0.4, label="federated")
        ax.bar([x + 0.2 for x in xs], loc, width=0.4, yerr=err, capsize=3, label="local mean")
        ax.set_xticks(list(xs), methods, rotation=30)
        ax.set(title=f"{family} {base}, α={alpha}", ylabel="held-out accuracy", ylim=(0, 1))
        _legend(ax)
    return _save(fig, path)


def plot_shots(results: Sequence[Result], path: Path) -> Path:
    """At the alpha measured with the most shot levels."""
    pre = pick(results, base="pretrained")
    alpha = richest(pre, "shots", "alpha") or ""
    sel = pick(pre, alpha=alpha)
    families = values(sel, "family")
    fig, axes = _panels(len(families))
    for ax, family in zip(axes, families, strict=False):
        rows = pick(sel, family=family)
        levels = values(rows, "shots")
        for m in values(rows, "method"):
            for mode in values(rows, "mode"):
                accs = [mean_over_seeds(rows, method=m, mode=mode, shots=s) for s in levels]
                points = [(i, a) for i, a in enumerate(accs) if a is not None]
                if len(points) >= 2:
                    style = "-" if mode == "federated" else "--"
                    ax.plot(*zip(*points, strict=True), style, marker="o", label=f"{m} {mode}")
        ax.set_xticks(range(len(levels)), levels)
        _accuracy_panel(ax, f"{family}: pre-trained, α={alpha}", "shots per class")
    return _save(fig, path)


def write_plots(results: Sequence[Result], out: Path) -> list[Path]:
    """Every figure (see the module docstring); none when there are no results."""
    ref = reference(results)
    if ref is None:
        return []
    alpha, shots = ref
    return [
        plot_rounds(results, alpha, shots, out / "accuracy_per_round.png"),
        plot_bytes(results, alpha, shots, out / "accuracy_vs_bytes.png"),
        plot_federated_vs_local(results, alpha, shots, out / "federated_vs_local.png"),
        plot_shots(results, out / "accuracy_vs_shots.png"),
    ]
