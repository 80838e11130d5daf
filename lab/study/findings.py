"""The paper's three findings, each tested plainly on the measured rows.

Each function returns one line that starts with `holds`, `does not hold` or
`not measured`, states the test, and gives the numbers it rests on. The tests
are fixed here, before any result is seen; they are not tuned to a grid.

1. Bias tuning works best on a strongly pre-trained base. Test: in every
   family, bias tuning's gain from pre-training (pre-trained minus random-init
   accuracy, federated, lowest alpha, reference shots) is at least 10 points
   (the issue's "clearly higher") and the largest of all methods' gains.
   Bias's rank on the pre-trained base is reported alongside.
2. CLIP beats ViT and is more robust in few-shot. Test: over cells measured
   for both families (pre-trained, federated, same method, alpha, shots,
   seed) CLIP's mean accuracy is higher, and CLIP's drop from all shots to
   the fewest shots (same pairs) is smaller.
3. Federated training beats purely local training. Test: at the lowest
   alpha, over every setting measured in both modes, the mean federated
   accuracy is higher than the mean of the organisations' local accuracies.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from lab.study.rows import Result, lowest_alpha, mean_over_seeds, pick, values

# "Clearly higher" accuracy from pre-training, as the issue states it for bias tuning.
MIN_BIAS_GAIN = 0.10

__all__ = ["finding_bias", "finding_clip_vs_vit", "finding_federated", "findings", "reference"]


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def pts(x: float) -> str:
    return f"{100 * x:+.1f} points"


def reference(results: Sequence[Result]) -> tuple[str, str] | None:
    """(lowest alpha, reference shots): 'all' when measured, else the most shots."""
    fed = pick(results, mode="federated") or list(results)
    alpha = lowest_alpha(fed)
    if alpha is None:
        return None
    shots = values(pick(fed, alpha=alpha), "shots")
    return alpha, shots[-1]


def _gains(results: Sequence[Result], family: str, alpha: str, shots: str) -> dict[str, float]:
    gains = {}
    for method in values(pick(results, family=family), "method"):
        where = {"family": family, "method": method, "alpha": alpha, "shots": shots}
        pre = mean_over_seeds(results, base="pretrained", mode="federated", **where)
        rnd = mean_over_seeds(results, base="random", mode="federated", **where)
        if pre is not None and rnd is not None:
            gains[method] = pre - rnd
    return gains


def finding_bias(results: Sequence[Result]) -> str:
    ref = reference(results)
    test = (
        f"test: in every family bias gains at least {100 * MIN_BIAS_GAIN:.0f} points from "
        "pre-training, and more than any other method"
    )
    if ref is None:
        return f"not measured — {test}; no federated rows"
    alpha, shots = ref
    parts, holds = [], True
    for family in values(results, "family"):
        gains = _gains(results, family, alpha, shots)
        if "bias" not in gains or len(gains) < 2:
            return f"not measured — {test}; {family} lacks bias or another method on both bases"
        ranked = sorted(gains, key=lambda m: -gains[m])
        best_other = next(m for m in ranked if m != "bias")
        pre = {
            m: mean_over_seeds(
                results, family=family, method=m, base="pretrained", mode="federated",
                alpha=alpha, shots=shots,
            ) or 0.0
            for m in gains
        }  # fmt: skip
        rank = sorted(pre, key=lambda m: -pre[m]).index("bias") + 1
        holds &= ranked[0] == "bias" and gains["bias"] >= MIN_BIAS_GAIN
        parts.append(
            f"{family}: bias {pts(gains['bias'])} (largest other: {best_other} "
            f"{pts(gains[best_other])}); on the pre-trained base bias reaches {pct(pre['bias'])}, "
            f"rank {rank} of {len(pre)}"
        )
    verdict = "holds" if holds else "does not hold"
    return f"{verdict} — {test} (federated, α={alpha}, shots={shots}). " + "; ".join(parts) + "."


def _paired(results: Sequence[Result]) -> tuple[list[Result], list[Result]]:
    """Pre-trained federated rows measured for both families, matched (CLIP, ViT)."""
    rows = pick(results, base="pretrained", mode="federated")
    vit = {(r.method, r.alpha, r.shots, r.seed): r for r in pick(rows, family="hf_vit")}
    pairs = [
        (r, vit[(r.method, r.alpha, r.shots, r.seed)])
        for r in pick(rows, family="open_clip")
        if (r.method, r.alpha, r.shots, r.seed) in vit
    ]
    return [c for c, _ in pairs], [v for _, v in pairs]


def _drop(clip: list[Result], vit: list[Result]) -> tuple[float, float, str] | None:
    """Mean drop from all shots to the fewest shots, over pairs measured at both levels."""
    levels = [s for s in values(clip, "shots") if s != "all"]
    if not levels or not pick(clip, shots="all"):
        return None
    few = levels[0]

    def drops(rows: list[Result]) -> list[float]:
        at = {(r.method, r.alpha, r.seed, r.shots): r.final for r in rows}
        return [
            at[(m, a, s, "all")] - at[(m, a, s, few)]
            for (m, a, s, shots) in at
            if shots == few and (m, a, s, "all") in at
        ]

    c, v = drops(clip), drops(vit)
    return (statistics.fmean(c), statistics.fmean(v), few) if c and v else None


def finding_clip_vs_vit(results: Sequence[Result]) -> str:
    test = (
        "test: CLIP's mean accuracy is higher than ViT's and drops less from all shots to "
        "few shots (pre-trained, federated, matched cells)"
    )
    clip, vit = _paired(results)
    if not clip:
        return f"not measured — {test}; no cell was run for both families"
    mc, mv = statistics.fmean(r.final for r in clip), statistics.fmean(r.final for r in vit)
    drop = _drop(clip, vit)
    numbers = f"mean over {len(clip)} matched cells: CLIP {pct(mc)}, ViT {pct(mv)}"
    if drop is None:
        return f"not measured — {test}; {numbers}; no few-shot cells for both families"
    dc, dv, few = drop
    verdict = "holds" if mc > mv and dc < dv else "does not hold"
    return (
        f"{verdict} — {test}. {numbers}; {few} shots per class against all shots: "
        f"CLIP {pts(-dc)}, ViT {pts(-dv)}."
    )


def finding_federated(results: Sequence[Result]) -> str:
    alpha = lowest_alpha(results)
    test = "test: mean federated accuracy above the mean local-only accuracy at the lowest α"
    local = {(*r.key[:5], r.seed): r for r in pick(results, mode="local", alpha=alpha or "")}
    pairs = [
        (r, local[(*r.key[:5], r.seed)])
        for r in pick(results, mode="federated", alpha=alpha or "")
        if (*r.key[:5], r.seed) in local
    ]
    if not pairs:
        return f"not measured — {test}; no setting was run both federated and local"
    fed = statistics.fmean(f.final for f, _ in pairs)
    loc = statistics.fmean(lo.final for _, lo in pairs)
    wins = sum(f.final > lo.final for f, lo in pairs)
    spread = statistics.fmean(lo.spread or 0.0 for _, lo in pairs)
    verdict = "holds" if fed > loc else "does not hold"
    return (
        f"{verdict} — {test} (α={alpha}). Over {len(pairs)} settings: federated {pct(fed)}, "
        f"local mean {pct(loc)} ({pts(fed - loc)}; organisations' std {100 * spread:.1f} points "
        f"on average); federated higher in {wins} of {len(pairs)}."
    )


def findings(results: Sequence[Result]) -> list[str]:
    return [
        finding_bias(results),
        finding_clip_vs_vit(results),
        finding_federated(results),
    ]
