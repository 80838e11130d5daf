"""Multi-Krum: the uniform mean of the m updates with the lowest Krum scores.

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017 (section 5). Scores, ties
and the fallback for rounds of n <= 2f + 2 updates are Krum's (see `krum`).
m = options.num_selected, by default n - f; never more than n - f, so the f
worst-scored updates are always left out. The selected deltas weigh the same:
like the coordinate-wise strategies, self-reported example counts would let
one client buy a larger share of the aggregate, so `weighting` does not apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch

from aggregator_service.aggregation.base import AggregationResult, register_strategy
from aggregator_service.aggregation.deltas import Deltas
from aggregator_service.aggregation.krum import krum_select
from shared.spec import AggregationSpec
from shared.strategies import MultiKrumOptions


@register_strategy("multi_krum")
def multi_krum(
    global_state: Mapping[str, torch.Tensor],
    deltas: Deltas,
    spec: AggregationSpec,
    server_state: Mapping[str, torch.Tensor],
) -> AggregationResult:
    """new = old + the mean of the m best-scored deltas."""
    opts = cast(MultiKrumOptions, spec.strategy_options())
    return krum_select(global_state, deltas, spec, opts.num_selected)
