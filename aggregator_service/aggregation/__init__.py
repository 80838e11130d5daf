"""Aggregation strategies, one file each; importing this package registers them all."""

from aggregator_service.aggregation import (  # noqa: F401
    fedadagrad,
    fedadam,
    fedavg,
    fedavgm,
    fedyogi,
    krum,
    median,
    multi_krum,
    trimmed_mean,
)
from aggregator_service.aggregation.base import (
    STRATEGIES,
    AggregationResult,
    aggregate,
    get_strategy,
)
from aggregator_service.aggregation.deltas import (
    BlobDeltas,
    Deltas,
    MemoryDeltas,
    UpdateInput,
)

__all__ = [
    "STRATEGIES",
    "AggregationResult",
    "BlobDeltas",
    "Deltas",
    "MemoryDeltas",
    "UpdateInput",
    "aggregate",
    "get_strategy",
]
