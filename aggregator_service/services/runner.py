"""Async side of the state machine: start-up recovery, the deadline ticker, aggregation threads,
and long-polls that wake on in-process notifications or on a periodic database re-check
(which also sees changes made by other service processes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aggregator_service.services.context import Core
from aggregator_service.services.rounds import (
    aggregate_round,
    current_revision,
    due_rounds,
    round_status,
    start_aggregation,
    stuck_rounds,
    take_over_stale,
)
from aggregator_service.services.slots import ClientSlots
from shared.api import RoundStatus

__all__ = ["RoundRunner", "before_aggregation"]

log = logging.getLogger("fedtune.server")

# Called with (federation id, round) in the aggregation thread once the round is `aggregating`,
# before its inputs are read. The product installs none: tests inject faults here (a delay to
# be killed in, a pause, an exception).
before_aggregation: list[Callable[[str, int], None]] = []


class RoundRunner:
    def __init__(self, core: Core) -> None:
        self.core = core
        settings = core.settings
        # Per-client limits on the requests held open on this loop (per process: see slots).
        self.polls = ClientSlots(
            "long-polls", settings.max_polls_per_client, settings.busy_retry_after_s
        )
        self.uploads = ClientSlots(
            "uploads", settings.max_uploads_per_client, settings.busy_retry_after_s
        )
        self._tasks: set[asyncio.Task[bool]] = set()
        self._running: set[tuple[str, int]] = set()
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind notifications to this loop, clean temp files, resume interrupted aggregations."""
        self.core.notifier.bind(asyncio.get_running_loop())
        removed = await asyncio.to_thread(self.core.blobs.remove_stale_temps)
        if removed:
            log.info("removed %d stale temp files from the blob store", removed)
        for fid, number in await asyncio.to_thread(stuck_rounds, self.core):
            log.warning(
                "federation %s round %d was left aggregating: aggregating again", fid, number
            )
            self._spawn(fid, number)
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.core.notifier.bind(None)

    async def maybe_close(self, fid: str, number: int) -> bool:
        """Move the round to aggregating if it qualifies, and aggregate it in a thread."""
        reason = await asyncio.to_thread(start_aggregation, self.core, fid, number)
        if reason is None:
            return False
        self._spawn(fid, number)
        return True

    def _spawn(self, fid: str, number: int) -> None:
        if (fid, number) in self._running:
            return
        self._running.add((fid, number))
        task = asyncio.create_task(asyncio.to_thread(self._aggregate, fid, number))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, (fid, number)))

    def _aggregate(self, fid: str, number: int) -> bool:
        for hook in before_aggregation:
            hook(fid, number)
        return aggregate_round(self.core, fid, number)

    def _done(self, task: asyncio.Task[bool], key: tuple[str, int]) -> None:
        self._tasks.discard(task)
        self._running.discard(key)
        if not task.cancelled() and task.exception() is not None:
            log.error("aggregation of %s round %d failed", *key, exc_info=task.exception())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.core.settings.deadline_check_s)
            try:
                for fid, number in await asyncio.to_thread(due_rounds, self.core):
                    await self.maybe_close(fid, number)
                for fid, number in await asyncio.to_thread(take_over_stale, self.core):
                    if (fid, number) not in self._running:
                        log.warning("taking over the stale aggregation of %s round %d", fid, number)
                        self._spawn(fid, number)
            except Exception:
                log.exception("deadline check failed")

    async def wait_for_change(
        self,
        fid: str,
        client_id: str | None,
        wait_s: float,
        revision: int | None,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> RoundStatus:
        """The round status, held until its revision differs from `revision` or `wait_s` passes.

        `disconnected` is asked at each re-check: once the caller has gone, the wait ends
        (what is returned then reaches nobody).
        """
        loop = asyncio.get_running_loop()
        notifier = self.core.notifier
        event = notifier.event(fid)
        status = await asyncio.to_thread(round_status, self.core, fid, client_id)
        if wait_s <= 0 or (revision is not None and revision != status.revision):
            return status
        seen = status.revision
        until = loop.time() + wait_s
        while (left := until - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, self.core.settings.poll_recheck_s))
            event = notifier.event(fid)
            if disconnected is not None and await disconnected():
                return status
            if await asyncio.to_thread(current_revision, self.core, fid) != seen:
                break
        return await asyncio.to_thread(round_status, self.core, fid, client_id)
