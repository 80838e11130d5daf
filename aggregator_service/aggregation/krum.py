"""Krum: apply the one update closest to its n - f - 2 nearest neighbours.

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017. Each update's score is the
sum of its squared L2 distances to the n - f - 2 updates nearest to it; the
update with the lowest score is applied as it is. Multi-Krum (`multi_krum`)
averages the m lowest-scored ones instead; both run `krum_select` here.

What the distances are taken between: the deltas after the spec's per-update
`clip_norm`, the same values every strategy aggregates. They are accumulated in
float64 tensor by tensor, in slices of `Contributions.chunks` (memory: one
block of `CHUNK_BUDGET` elements across the n updates, never the updates
whole). Ties in score go to the update that comes first in the service's
order (`UpdateInput.sort_key`, then the client id), so the choice is the same
whatever the arrival order. A non-finite score ranks last.

Krum's guarantee needs n > 2f + 2. The spec refuses a federation whose
`rounds.min_updates` is below that (`KrumOptions.check_min_updates`); a round
that still has fewer updates (one left out for a non-finite aggregate) is
aggregated by the coordinate-wise median instead, which tolerates any minority
without a count, and a warning is logged: failing would only leave the round
stuck retrying.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import cast

import torch

from aggregator_service.aggregation.base import (
    AggregationResult,
    Contributions,
    register_strategy,
)
from aggregator_service.aggregation.coordinatewise import aggregate_coordinatewise
from aggregator_service.aggregation.deltas import Deltas
from aggregator_service.aggregation.median import median_of_block
from shared.spec import AggregationSpec
from shared.strategies import KrumOptions

__all__ = [
    "aggregate_selected",
    "krum",
    "krum_scores",
    "krum_select",
    "pairwise_sq_distances",
    "select",
]

log = logging.getLogger(__name__)


def pairwise_sq_distances(
    contributions: Contributions, like: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """[n, n] float64 squared L2 distances between the (clipped) deltas, over every tensor.

    Streams one slice of one tensor at a time; per pair the sum runs over tensors in
    name order and slices in order, so the result does not depend on arrival order.
    """
    n = len(contributions)
    dist = torch.zeros((n, n), dtype=torch.float64)
    for name in sorted(like):
        for _, block in contributions.chunks(name, like[name]):
            rows = block.to(torch.float64)
            for i in range(n - 1):
                diff = rows[i + 1 :] - rows[i]
                dist[i, i + 1 :] += (diff * diff).sum(dim=1)
    return dist + dist.T


def krum_scores(dist: torch.Tensor, num_byzantine: int) -> list[float]:
    """Each update's sum of squared distances to its n - f - 2 nearest others (float64)."""
    n = dist.shape[0]
    k = n - num_byzantine - 2
    scores = []
    for i in range(n):
        others = torch.cat([dist[i, :i], dist[i, i + 1 :]])
        score = float(torch.sort(others).values[:k].sum())
        scores.append(score if math.isfinite(score) else math.inf)
    return scores


def select(scores: Sequence[float], m: int) -> list[int]:
    """Indices of the m lowest scores, ties to the earlier update, returned in update order."""
    ranked = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(ranked[:m])


def aggregate_selected(
    global_state: Mapping[str, torch.Tensor], contributions: Contributions, chosen: Sequence[int]
) -> AggregationResult:
    """new = old + the uniform mean of the chosen (clipped) deltas, summed in update order."""
    out: dict[str, torch.Tensor] = {}
    for name in sorted(global_state):
        old = global_state[name]
        acc = old.to(torch.float32, copy=True).reshape(-1)
        step = torch.zeros_like(acc)
        for i in chosen:
            src = contributions.raw(i, name, old).reshape(-1)
            if src.dtype != torch.float32:
                src = src.to(torch.float32)
            step.add_(src, alpha=contributions.scales[i] / len(chosen))
        out[name] = acc.add_(step).view(old.shape).to(old.dtype)
    return AggregationResult(out)


def krum_select(
    global_state: Mapping[str, torch.Tensor],
    deltas: Deltas,
    spec: AggregationSpec,
    m: int | None,
) -> AggregationResult:
    """Aggregate the m best-scored updates (m None: n - f), or the median when n <= 2f + 2.

    f is the options' `num_byzantine`, which Krum and Multi-Krum both declare.
    """
    num_byzantine = cast(KrumOptions, spec.strategy_options()).num_byzantine
    n = len(deltas)
    if n <= 2 * num_byzantine + 2:
        log.warning(
            "%s: %d updates cannot tolerate num_byzantine %d (Krum needs more than %d); "
            "aggregating this round by the coordinate-wise median instead",
            spec.strategy,
            n,
            num_byzantine,
            2 * num_byzantine + 2,
        )
        return aggregate_coordinatewise(global_state, deltas, spec, median_of_block)
    contributions = Contributions(deltas, spec)
    scores = krum_scores(pairwise_sq_distances(contributions, global_state), num_byzantine)
    keep = n - num_byzantine if m is None else min(m, n - num_byzantine)
    return aggregate_selected(global_state, contributions, select(scores, keep))


@register_strategy("krum")
def krum(
    global_state: Mapping[str, torch.Tensor],
    deltas: Deltas,
    spec: AggregationSpec,
    server_state: Mapping[str, torch.Tensor],
) -> AggregationResult:
    """new = old + the delta with the lowest Krum score."""
    return krum_select(global_state, deltas, spec, 1)
