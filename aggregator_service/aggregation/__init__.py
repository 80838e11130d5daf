"""Aggregation strategies, one file each; importing this package registers them all."""

from aggregator_service.aggregation import (  # noqa: F401
    fedadagrad,
    fedadam,
    fedavg,
    fedavgm,
    fedyogi,
    median,
    trimmed_mean,
)
from aggregator_service.aggregation.base import (
    STRATEGIES,
    AggregationResult,
    UpdateInput,
    get_strategy,
)

__all__ = ["STRATEGIES", "AggregationResult", "UpdateInput", "get_strategy"]
