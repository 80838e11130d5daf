"""Prometheus metrics on a per-app registry, so many apps can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds_aggregated = Counter(
            "fedtune_rounds_aggregated", "Rounds aggregated by this process.", registry=r
        )
        self.updates_accepted = Counter(
            "fedtune_updates_accepted", "Updates accepted (new, not duplicates).", registry=r
        )
        self.updates_refused = Counter(
            "fedtune_updates_refused", "Updates refused, by error code.", ["reason"], registry=r
        )
        self.bytes_in = Counter("fedtune_bytes_in", "Update bytes accepted.", registry=r)
        self.bytes_out = Counter("fedtune_bytes_out", "State and base bytes served.", registry=r)
        self.aggregation_seconds = Histogram(
            "fedtune_aggregation_seconds",
            "Wall time of one round's aggregation.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
