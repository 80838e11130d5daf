"""Prometheus metrics on a per-app registry, so many apps can live in one process.

Who may read them: on the main listener the metrics token or the admin token (checked by the
route); on the optional separate listener (`--metrics-port`, for a scraper inside the
cluster) anyone who can reach it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from aggregator_service.settings import Settings

__all__ = ["Metrics", "MetricsListener", "ScrapedGauge", "resolve_metrics_token"]

log = logging.getLogger("fedtune.server")


class Metrics:
    def __init__(self, token: str | None = None) -> None:
        self._token_digest = _digest(token) if token else None
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
        self.faults = Counter(
            "fedtune_faults",
            "Requests and background work that met a fault: database_unavailable, "
            "insufficient_storage.",
            ["kind"],
            registry=r,
        )
        self.aggregation_failures = Counter(
            "fedtune_aggregation_failures",
            "Aggregation attempts that failed (retried with backoff).",
            registry=r,
        )
        self.aggregation_takeovers = Counter(
            "fedtune_aggregation_takeovers",
            "Aggregations this process took over from a lease that expired.",
            registry=r,
        )
        self.aggregation_seconds = Histogram(
            "fedtune_aggregation_seconds",
            "Wall time of one round's aggregation.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.epsilons = ScrapedGauge(
            "fedtune_privacy_epsilon",
            "Federations with central privacy: ε (at privacy.delta) after the latest closed round.",
        )
        self.secure_attempts = ScrapedGauge(
            "fedtune_secagg_attempt",
            "Federations with secure aggregation: the open round's protocol attempt (1, or more "
            "once it restarted because too few clients were left).",
        )
        r.register(self.epsilons)
        r.register(self.secure_attempts)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def is_metrics_token(self, token: str) -> bool:
        """Whether `token` is the metrics token (False when none is configured)."""
        if self._token_digest is None:
            return False
        return hmac.compare_digest(_digest(token), self._token_digest)


class ScrapedGauge(Collector):
    """A gauge by federation read from the database at every scrape (set `source`), so every
    replica reports every federation, whichever of them changed it."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name, self.documentation = name, documentation
        self.source: Callable[[], Mapping[str, float]] | None = None

    def describe(self) -> list[Metric]:
        return []  # collected on each scrape, never at registration

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(self.name, self.documentation, labels=["federation"])
        try:
            values = self.source() if self.source is not None else {}
        except Exception as exc:  # the database is away: the scrape still answers
            log.debug("%s not read: %s", self.name, exc)
            values = {}
        for fid, value in sorted(values.items()):
            gauge.add_metric([fid], value)
        yield gauge


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def resolve_metrics_token(settings: Settings) -> str | None:
    """The metrics token from the settings or from its file (first line); None when unset."""
    if settings.metrics_token is not None:
        return settings.metrics_token.get_secret_value() or None
    path = settings.metrics_token_file
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read metrics token file {path}: {exc.strerror}") from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise ValueError(f"metrics token file {path} is empty")
    return token


class MetricsListener:
    """The registry served without a token on its own address, in a background thread."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.port = int(self._server.server_port)
        log.info("metrics without a token on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
