"""Aggregation strategies, one file each; importing this package registers them all."""

from aggregator_service.aggregation import fedavg  # noqa: F401
from aggregator_service.aggregation.base import (
    STRATEGIES,
    AggregationResult,
    UpdateInput,
    get_strategy,
)

__all__ = ["STRATEGIES", "AggregationResult", "UpdateInput", "get_strategy"]
