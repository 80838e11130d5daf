"""Jinja2 filters: how the pages write bytes, durations, times and metrics
(`static/dashboard.js` writes the live figures the same way)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

__all__ = ["FILTERS", "human_bytes", "metric", "seconds", "utc"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    value = float(n)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def seconds(s: float | None) -> str:
    """A duration: 0.123 s, 42 s, 3 min 05 s, 2 h 07 min."""
    if s is None:
        return "–"
    if s < 10:
        return f"{s:.3g} s"
    whole = int(s)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def utc(t: datetime | None) -> str:
    return "–" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def metric(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


FILTERS: dict[str, Callable[..., Any]] = {
    "human_bytes": human_bytes,
    "seconds": seconds,
    "utc": utc,
    "metric": metric,
}
