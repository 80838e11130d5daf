"""Per-API-key concurrency limits: how many long-polls, and how many uploads, one client runs.

A long-poll re-reads the database every `poll_recheck_s` for up to a minute and an upload
holds a spool file of up to `max_upload_mb`, so one organisation opening them without end
would cost the server what all the others need. Past its limit a client is refused with
`Busy` (with a time to retry after); a slot is given back when its request ends, however it ends.

The counts live in this process: behind a load balancer with N replicas, one key may hold up
to N times the limit in all, and still no more than the limit on any one replica.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from aggregator_service.services.errors import Busy

__all__ = ["ClientSlots"]


class ClientSlots:
    """At most `limit` concurrent requests of one kind per client, in this process."""

    def __init__(self, kind: str, limit: int, retry_after_s: int) -> None:
        self.kind = kind
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, client_id: str | None) -> Iterator[None]:
        """One of `client_id`'s slots for the duration of the block; `Busy` when all are taken.

        `None` (the admin, or a request that holds nothing open) is not limited.
        """
        if client_id is None:
            yield
            return
        with self._lock:
            held = self._held.get(client_id, 0)
            if held >= self.limit:
                raise Busy(
                    f"this API key already has {held} {self.kind} running on this server, the "
                    f"most it may hold at once; finish one, or retry in {self.retry_after_s}s",
                    retry_after_s=self.retry_after_s,
                )
            self._held[client_id] = held + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._held[client_id] - 1
                if left:
                    self._held[client_id] = left
                else:
                    del self._held[client_id]

    def held(self, client_id: str) -> int:
        """How many of `client_id`'s slots are taken now."""
        with self._lock:
            return self._held.get(client_id, 0)
