"""summary.md: the paper's tables and the three findings, drawn from results.csv alone.

Accuracies are held-out top-1 in percent, averaged over seeds. The reference
setting of the method table is the lowest alpha with all shots (or the most
shots measured); "local" is the mean over organisations, ± their std and
[min–max].
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from pathlib import Path

from lab.study.findings import findings, reference
from lab.study.rows import Result, load_results, mean_over_seeds, pick, values

__all__ = ["summary_markdown", "write_report"]

SUMMARY_FILE = "summary.md"


def _acc(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def method_table(results: Sequence[Result], alpha: str, shots: str) -> list[str]:
    """Method × family, pre-trained vs random, with what each method sends per round."""
    fed = pick(results, mode="federated", alpha=alpha, shots=shots)
    families = values(fed, "family")
    header = ["method"]
    for f in families:
        header += [
            f"{f} pre-trained",
            f"{f} random",
            f"{f} gain",
            f"{f} trainable",
            f"{f} up/round",
        ]
    rows = []
    for m in values(fed, "method"):
        row = [m]
        for f in families:
            pre = mean_over_seeds(fed, family=f, method=m, base="pretrained")
            rnd = mean_over_seeds(fed, family=f, method=m, base="random")
            gain = "–" if pre is None or rnd is None else f"{100 * (pre - rnd):+.1f}"
            sample = pick(fed, family=f, method=m)
            trainable = f"{sample[0].trainable:,}" if sample else "–"
            up = f"{sample[0].bytes_up / 1024:,.1f} KiB" if sample else "–"
            row += [_acc(pre), _acc(rnd), gain, trainable, up]
        rows.append(row)
    return _table(header, rows)


def _local_cell(rows: list[Result]) -> str:
    if not rows:
        return "–"
    mean = statistics.fmean(r.final for r in rows)
    std = statistics.fmean(r.spread or 0.0 for r in rows)
    low = min(r.low if r.low is not None else r.final for r in rows)
    high = max(r.high if r.high is not None else r.final for r in rows)
    return f"{100 * mean:.1f} ± {100 * std:.1f} [{100 * low:.1f}–{100 * high:.1f}]"


def federated_vs_local_table(results: Sequence[Result], alpha: str, shots: str) -> list[str]:
    at = pick(results, alpha=alpha, shots=shots)
    rows = []
    for f in values(at, "family"):
        for b in values(at, "base"):
            for m in values(at, "method"):
                fed = mean_over_seeds(at, family=f, base=b, method=m, mode="federated")
                loc = pick(at, family=f, base=b, method=m, mode="local")
                if fed is None and not loc:
                    continue
                diff = (
                    f"{100 * (fed - statistics.fmean(r.final for r in loc)):+.1f}"
                    if fed is not None and loc
                    else "–"
                )
                rows.append([f, b, m, _acc(fed), _local_cell(loc), diff])
    header = ["family", "base", "method", "federated", "local mean ± std [min–max]", "fed − local"]
    return _table(header, rows)


def axis_table(results: Sequence[Result], axis: str, other: str, **where: str) -> list[str]:
    """Rows (family, method, mode, `other`) × columns: the levels of `axis` (shots or alpha).

    Only rows measured at two or more levels are shown.
    """
    sel = pick(results, **where)
    levels = values(sel, axis)
    rows = []
    for f, m, mode, o in itertools.product(
        *(values(sel, k) for k in ("family", "method", "mode", other))
    ):
        at = {"family": f, "method": m, "mode": mode, other: o}
        accs = [mean_over_seeds(sel, **at, **{axis: v}) for v in levels]
        if sum(a is not None for a in accs) >= 2:
            rows.append([f, m, mode, o, *(_acc(a) for a in accs)])
    return _table(["family", "method", "mode", other, *(f"{axis}={v}" for v in levels)], rows)


def summary_markdown(results: Sequence[Result]) -> str:
    ref = reference(results)
    if ref is None:
        return "# FedTune study\n\nNo results yet.\n"
    alpha, shots = ref
    wall = sum(r.wall_s for r in results)
    lines = [
        "# FedTune study",
        "",
        f"{len(results)} cells, {wall / 60:.1f} min of cell time. Held-out top-1 accuracy in "
        "percent, mean over seeds; local = mean over organisations, each trained alone. "
        "Each finding's line gives the verdict, the test (fixed in `lab/study/findings.py`, "
        "not tuned to any grid) and the numbers it rests on.",
        "",
        f"## Method × family (federated, α={alpha}, shots={shots})",
        "",
        *method_table(results, alpha, shots),
        "",
        f"## Federated vs local (α={alpha}, shots={shots})",
        "",
        *federated_vs_local_table(results, alpha, shots),
        "",
        "## Accuracy vs shots per class (pre-trained base)",
        "",
        *axis_table(results, "shots", "alpha", base="pretrained"),
        "",
        "## Accuracy vs Dirichlet α (pre-trained base)",
        "",
        *axis_table(results, "alpha", "shots", base="pretrained"),
        "",
        "## Findings",
        "",
    ]
    titles = [
        "Bias tuning works best on a strongly pre-trained base",
        "CLIP beats ViT and is more robust in few-shot",
        "Federated training beats purely local training",
    ]
    for n, (title, line) in enumerate(zip(titles, findings(results), strict=True), start=1):
        verdict, rest = line.split(" — ", 1)
        lines += [f"{verdict} — ({n}) {title}: {rest}", ""]
    return "\n".join(lines)


def write_report(out: Path) -> list[Path]:
    """Write summary.md and the plots from `<out>/results.csv`; returns the files written."""
    from lab.study.plots import write_plots

    results = load_results(out)
    path = out / SUMMARY_FILE
    path.write_text(summary_markdown(results), encoding="utf-8")
    return [path, *write_plots(results, out)]
