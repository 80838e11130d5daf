"""`Core`: everything one app instance owns (settings, database, blobs, metrics, notifier)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from aggregator_service.metrics import Metrics
from aggregator_service.services.errors import NotFound
from aggregator_service.settings import Settings
from aggregator_service.storage import Database, LocalBlobStore
from aggregator_service.storage.tables import federations
from shared.spec import FederationSpec

__all__ = ["Core", "Mint", "Notifier", "fresh_secret", "hash_token", "now"]

# Makes a shown-once secret (an API key, an enrollment token): `mint(prefix, nbytes)` is the
# prefix and `nbytes` random bytes in URL-safe base64.
Mint = Callable[[str, int], str]


def now() -> float:
    return time.time()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def fresh_secret(prefix: str, nbytes: int) -> str:
    """The `Mint` of every request without an Idempotency-Key: fresh randomness."""
    return prefix + secrets.token_urlsafe(nbytes)


class Notifier:
    """Wakes in-process long-polls of a federation; callable from any thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, asyncio.Event] = {}

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    def event(self, federation_id: str) -> asyncio.Event:
        """The event the next change of this federation sets (call on the event loop)."""
        return self._events.setdefault(federation_id, asyncio.Event())

    def notify(self, federation_id: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fire, federation_id)

    def _fire(self, federation_id: str) -> None:
        event = self._events.pop(federation_id, None)
        if event is not None:
            event.set()


@dataclass
class Core:
    settings: Settings
    db: Database
    blobs: LocalBlobStore
    metrics: Metrics
    admin_token_hash: str
    notifier: Notifier = field(default_factory=Notifier)
    _specs: dict[str, FederationSpec] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def spec(self, federation_id: str) -> FederationSpec:
        """The federation's spec (immutable, so cached); `NotFound` when there is none."""
        with self._lock:
            cached = self._specs.get(federation_id)
        if cached is not None:
            return cached
        with self.db.read() as conn:
            text = conn.execute(
                select(federations.c.spec).where(federations.c.id == federation_id)
            ).scalar()
        if text is None:
            raise NotFound(f"no federation {federation_id!r}")
        spec = FederationSpec.model_validate(json.loads(text))
        with self._lock:
            self._specs[federation_id] = spec
        return spec
