"""`Core`: everything one app instance owns (settings, database, blobs, metrics, notifier)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from aggregator_service.metrics import Metrics
from aggregator_service.services.errors import NotFound
from aggregator_service.services.faults import Faults
from aggregator_service.settings import MIN_ADMIN_TOKEN_CHARS, Settings
from aggregator_service.storage import BlobStore, Database
from aggregator_service.storage.tables import federations
from shared.spec import FederationSpec

__all__ = ["AdminTokens", "Core", "Mint", "Notifier", "fresh_secret", "hash_token", "now"]

log = logging.getLogger("fedtune.server")

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
    """Wakes the long-polls of a federation when its round changes; callable from any thread.

    `notify` wakes this process's waiters and, through `broadcast` (PostgreSQL's NOTIFY, set
    by the runner), every other replica's; `wake` is what a notification from another replica
    calls (None: anything may have changed, after the listener reconnected).
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, asyncio.Event] = {}
        self._generations: dict[str, int] = {}
        self.broadcast: Callable[[str], None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    def event(self, federation_id: str) -> asyncio.Event:
        """The event the next change of this federation sets (call on the event loop)."""
        return self._events.setdefault(federation_id, asyncio.Event())

    def notify(self, federation_id: str) -> None:
        self.wake(federation_id)
        broadcast = self.broadcast
        if broadcast is not None:
            try:
                broadcast(federation_id)
            except Exception as exc:  # the other replicas' re-check still sees the change
                log.debug("could not broadcast a change of %s: %s", federation_id, exc)

    def wake(self, federation_id: str | None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fire, federation_id)

    def generation(self, federation_id: str) -> int:
        """How many times this federation's waiters were woken (call on the event loop)."""
        return self._generations.get(federation_id, 0)

    def _fire(self, federation_id: str | None) -> None:
        ids = (
            list({*self._events, *self._generations}) if federation_id is None else [federation_id]
        )
        for fid in ids:
            self._generations[fid] = self._generations.get(fid, 0) + 1
            event = self._events.pop(fid, None)
            if event is not None:
                event.set()


class AdminTokens:
    """The valid admin tokens (hashes): the settings' one, or every line of the token file.

    The file is re-read when its modification time, size or inode changes, looked at no more
    than once per `recheck_s` (on authentication), so an operator rotates without a restart:
    add the new token as a line, move the tools over, remove the old line. Replicas reading the
    same mounted secret all follow. A changed file that is unreadable, empty or holds a token
    shorter than `MIN_ADMIN_TOKEN_CHARS` is logged and ignored: the tokens read before stay.
    """

    def __init__(self, first_hash: str, path: Path | None = None, recheck_s: float = 1.0):
        self._hashes: tuple[str, ...] = (first_hash,)
        self._path = path
        self._recheck_s = recheck_s
        self._checked = float("-inf")
        self._seen: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        if path is not None:
            self._reload(force=True)

    @classmethod
    def from_settings(cls, settings: Settings, first_hash: str) -> AdminTokens:
        """Fixed when the token came from the settings; otherwise following the token file."""
        if settings.admin_token is not None:
            return cls(first_hash)
        return cls(first_hash, settings.admin_token_file or settings.data_dir / "admin-token")

    def matches(self, digest: str) -> bool:
        """Whether `digest` (sha256 hex of a bearer token) is one of the admin tokens'."""
        self._reload()
        # compare with every hash, so the timing says nothing about which one matched
        found = False
        for known in self._hashes:
            found |= hmac.compare_digest(digest, known)
        return found

    def _reload(self, force: bool = False) -> None:
        if self._path is None:
            return
        t = time.monotonic()
        with self._lock:
            if not force and t - self._checked < self._recheck_s:
                return
            self._checked = t
            try:
                st = os.stat(self._path)
            except OSError as exc:
                log.error(
                    "admin token file %s: %s; keeping the tokens read before", self._path, exc
                )
                return
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
            if seen == self._seen:
                return
            self._seen = seen
            hashes = self._read(self._path)
            if hashes:
                self._hashes = hashes

    @staticmethod
    def _read(path: Path) -> tuple[str, ...]:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            log.error("admin token file %s: %s; keeping the tokens read before", path, exc)
            return ()
        tokens = [line.strip() for line in text.splitlines() if line.strip()]
        if not tokens or any(len(token) < MIN_ADMIN_TOKEN_CHARS for token in tokens):
            log.error(
                "admin token file %s is empty or holds a token shorter than %d characters; "
                "keeping the tokens read before",
                path,
                MIN_ADMIN_TOKEN_CHARS,
            )
            return ()
        return tuple(hash_token(token) for token in tokens)


@dataclass
class Core:
    settings: Settings
    db: Database
    blobs: BlobStore
    metrics: Metrics
    admin_token_hash: str  # the first admin token's at start-up; `admin_tokens` checks all
    notifier: Notifier = field(default_factory=Notifier)
    faults: Faults = field(default_factory=Faults)
    admin_tokens: AdminTokens = field(init=False)
    _specs: dict[str, FederationSpec] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.admin_tokens = AdminTokens.from_settings(self.settings, self.admin_token_hash)

    def is_admin_token(self, digest: str) -> bool:
        """Whether `digest` (sha256 hex of a bearer token) is a valid admin token's."""
        return self.admin_tokens.matches(digest)

    async def spec_async(self, federation_id: str) -> FederationSpec:
        """`spec` from the event loop: from the cache at once, from the database in a thread."""
        with self._lock:
            cached = self._specs.get(federation_id)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.spec, federation_id)

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
