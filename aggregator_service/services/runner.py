"""Async side of the state machine: the sweeper, leased aggregation threads, and long-polls.

The sweeper runs every `deadline_check_s` on every replica: it closes rounds past their
deadline (or holding their quorum), and claims the lease of every `aggregating` round nobody
holds (a replica died, or an attempt failed and its backoff passed), so work is taken over
within the lease time without a restart. Each step of a sweep, and each federation's part in
it, fails alone: a federation that cannot be judged (its stored spec unreadable) holds up no
other federation's closing, secure phases or takeover. Faults it meets (the database away)
are logged once per change of state, and any other failure once per place until it changes,
not per sweep.

Long-polls wait on an in-process event per federation. Changes reach it from this process at
once, from other replicas through PostgreSQL's LISTEN/NOTIFY, and, as a safety net (and with
SQLite, where several processes may share the file), from one watcher per federation that
re-reads the round's revision while anybody waits: the cost of waiting does not grow with
the number of waiters. Woken waiters share one read of the round (a snapshot per change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select

from aggregator_service.services.context import Core
from aggregator_service.services.faults import FaultKind, classify
from aggregator_service.services.leases import (
    Attempt,
    claim,
    claimable,
    end_attempt,
    new_owner,
    renew,
    retry_delay,
)
from aggregator_service.services.rounds import (
    aggregate_round,
    current_revision,
    due_rounds,
    quorum_rounds,
    read_status,
    start_aggregation,
)
from aggregator_service.services.secagg import phases
from aggregator_service.services.slots import ClientSlots
from aggregator_service.storage.tables import updates
from shared.api import RoundStatus

__all__ = ["RoundRunner", "before_aggregation"]

log = logging.getLogger("fedtune.server")

# Called with (federation id, round) in the aggregation thread once the round is `aggregating`
# and its lease is held, before its inputs are read. The product installs none: tests inject
# faults here (a delay to be killed in, a pause, an exception).
before_aggregation: list[Callable[[str, int], None]] = []

# With LISTEN/NOTIFY connected, the per-federation re-check is only a safety net.
_NOTIFIED_RECHECK_S = 10.0
# A snapshot of a round read this recently is shared by the requests that ask for it.
_SNAPSHOT_FRESH_S = 0.25

T = TypeVar("T")


@dataclass(frozen=True)
class _Snapshot:
    """The current round as everyone sees it, and who has submitted to it."""

    status: RoundStatus
    submitted: frozenset[str]
    read_at: float

    def for_client(self, client_id: str | None) -> RoundStatus:
        return self.status.model_copy(update={"submitted": client_id in self.submitted})


@dataclass
class _Watch:
    """One federation's waiters: how many, their shared snapshot, and the re-check task."""

    waiters: int = 0
    snapshot: tuple[int, asyncio.Future[_Snapshot]] | None = None
    task: asyncio.Task[None] | None = None


class RoundRunner:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.owner = new_owner()
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
        self._watches: dict[str, _Watch] = {}
        self._stop_listening: Callable[[], None] | None = None
        self._listening = False
        self._bugs: dict[str, str] = {}  # where the last sweep failed -> how, as logged
        self._draining = False

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind notifications to this loop, clean temp files, listen, start the sweeper (its
        first sweep resumes what a dead process of this host left aggregating)."""
        core = self.core
        core.notifier.bind(asyncio.get_running_loop())
        removed = await asyncio.to_thread(core.blobs.remove_stale_temps)
        if removed:
            log.info("removed %d stale temp files from the blob store", removed)
        if not core.db.is_sqlite:
            core.notifier.broadcast = core.db.notify
            self._stop_listening = core.db.listen(self._on_notify, self._on_listener)
        self._ticker = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for watch in self._watches.values():
            if watch.task is not None:
                watch.task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._stop_listening is not None:
            await asyncio.to_thread(self._stop_listening)
        self.core.notifier.broadcast = None
        self.core.notifier.bind(None)

    def _on_notify(self, federation_id: str | None) -> None:
        self.core.notifier.wake(federation_id)

    def _on_listener(self, connected: bool) -> None:
        if connected != self._listening:
            self._listening = connected
            if connected:
                log.info("listening for round changes of other replicas (LISTEN/NOTIFY)")
            else:
                log.warning("not listening for other replicas' changes: re-checking instead")

    # -- closing and aggregating -----------------------------------------------------------

    async def maybe_close(self, fid: str, number: int) -> bool:
        """Move the round to aggregating if it qualifies, and aggregate it in a thread."""
        reason = await asyncio.to_thread(start_aggregation, self.core, fid, number)
        if reason is None:
            return False
        self.spawn(fid, number)
        return True

    def spawn(self, fid: str, number: int) -> None:
        """Aggregate an `aggregating` round in a thread, if its lease can be had."""
        if (fid, number) in self._running:
            return
        self._running.add((fid, number))
        task = asyncio.create_task(asyncio.to_thread(self._aggregate, fid, number))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, (fid, number)))

    def _aggregate(self, fid: str, number: int) -> bool:
        core = self.core
        attempt = claim(core, fid, number, self.owner)
        if attempt is None:
            return False
        if attempt.number > 1:
            core.metrics.aggregation_takeovers.inc()
            log.warning(
                "federation %s round %d: aggregation attempt %d", fid, number, attempt.number
            )
        beat = _Heartbeat(core, attempt, self.owner)
        try:
            for hook in before_aggregation:
                hook(fid, number)
            outcome = aggregate_round(core, fid, number, self.owner)
        except Exception as exc:
            self._failed(attempt, exc)
            return False
        finally:
            beat.stop()
        with contextlib.suppress(Exception):  # the lease expires by itself if this fails
            end_attempt(core, attempt, self.owner, outcome)
        return outcome == "closed"

    def _failed(self, attempt: Attempt, exc: Exception) -> None:
        core = self.core
        core.metrics.aggregation_failures.inc()
        kind = classify(exc)
        delay = retry_delay(attempt.number)
        if kind is not None:
            core.metrics.faults.labels(kind).inc()
            core.faults.failed(kind, exc)
        else:
            log.error(
                "federation %s round %d: aggregation attempt %d failed; retrying in %.0f s",
                attempt.federation_id,
                attempt.round,
                attempt.number,
                delay,
                exc_info=exc,
            )
        # When the database is away too, the lease expires and is claimed again all the same.
        with contextlib.suppress(Exception):
            end_attempt(core, attempt, self.owner, "failed", f"{type(exc).__name__}: {exc}")

    def _done(self, task: asyncio.Task[bool], key: tuple[str, int]) -> None:
        self._tasks.discard(task)
        self._running.discard(key)
        if not task.cancelled() and task.exception() is not None:
            log.error("aggregation of %s round %d failed", *key, exc_info=task.exception())

    async def _sweep_forever(self) -> None:
        while True:
            try:
                self._report(await self._sweep())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._report({"the sweep": exc})
            await asyncio.sleep(self.core.settings.deadline_check_s)

    async def _sweep(self) -> Mapping[str, Exception]:
        """One pass; returns what failed where (a step, or one federation's part in one)."""
        core, sweep = self.core, _Sweep()
        for listing in (due_rounds, quorum_rounds):
            ready = await sweep.run(listing.__name__, asyncio.to_thread(listing, core, sweep.lost))
            for fid, number in ready or ():
                await sweep.run(f"federation {fid}", self.maybe_close(fid, number))
        secure = await sweep.run("secure phases", asyncio.to_thread(phases.due, core))
        for fid, number in secure or ():
            if await sweep.run(
                f"federation {fid}", asyncio.to_thread(phases.advance, core, fid, number)
            ):
                self.spawn(fid, number)
        free = await sweep.run("lease takeover", asyncio.to_thread(claimable, core, self.owner))
        for fid, number in free or ():
            self.spawn(fid, number)
        return sweep.failed

    def _report(self, failed: Mapping[str, Exception]) -> None:
        """Log the sweep's failures: faults through `core.faults` (once per change of state),
        anything else once per place until it changes, not twice a second."""
        kinds: set[FaultKind] = set()
        bugs: dict[str, str] = {}
        for where, exc in failed.items():
            kind = classify(exc)
            if kind is not None:
                if kind not in kinds:
                    self.core.metrics.faults.labels(kind).inc()
                kinds.add(kind)
                self.core.faults.failed(kind, exc)
                continue
            bugs[where] = what = f"{type(exc).__name__}: {exc}"
            if self._bugs.get(where) != what:
                log.error("round sweep: %s failed: %s", where, what, exc_info=exc)
        self._bugs = bugs
        if "database_unavailable" not in kinds:
            self.core.faults.ok("database_unavailable")

    # -- long-polls ------------------------------------------------------------------------

    def drain_polls(self) -> None:
        """Answer every waiting long-poll now, and every later one at once: the server is
        shutting down, and a client re-polls elsewhere sooner than it would wait here."""
        self._draining = True
        self.core.notifier.wake(None)

    async def wait_for_change(
        self,
        fid: str,
        client_id: str | None,
        wait_s: float,
        revision: int | None,
        gone: Callable[[], Awaitable[object]] | None = None,
        after_round: int | None = None,
    ) -> RoundStatus:
        """The round status, held until `wait_s` passes or it changes: its revision differs
        from `revision` (any change: an update accepted, the round aggregating, a new round),
        or, with `after_round`, a later round opened or the federation completed or was
        cancelled (what a client waiting for its next round needs: the uploads of others do
        not wake it).

        `gone()` returns once the caller has disconnected: the wait ends then (what is
        returned reaches nobody). A waiting poll costs nothing until one of these happens.
        """
        loop = asyncio.get_running_loop()
        notifier = self.core.notifier
        event = notifier.event(fid)  # before the read: a change after it sets this event
        snapshot = await self._snapshot(fid)
        status = snapshot.for_client(client_id)
        seen = status.revision if revision is None else revision

        def changed(s: RoundStatus) -> bool:
            if after_round is not None:
                return s.round > after_round or s.federation_status in ("completed", "cancelled")
            return s.revision != seen

        if wait_s <= 0 or changed(status) or self._draining:
            return status
        until = loop.time() + wait_s
        left_task = asyncio.ensure_future(gone()) if gone is not None else None
        try:
            with self._waiting(fid, status.revision):
                while (left := until - loop.time()) > 0:
                    woken = asyncio.ensure_future(event.wait())
                    waits: set[asyncio.Future[Any]] = {woken}
                    if left_task is not None:
                        waits.add(left_task)
                    done, _ = await asyncio.wait(
                        waits, timeout=left, return_when=asyncio.FIRST_COMPLETED
                    )
                    if woken not in done:
                        woken.cancel()
                        if left_task in done:
                            return status
                        break
                    event = notifier.event(fid)
                    snapshot = await self._snapshot(fid, fresh=True)
                    if changed(snapshot.status) or self._draining:
                        return snapshot.for_client(client_id)
        finally:
            if left_task is not None:
                left_task.cancel()
        return (await self._snapshot(fid)).for_client(client_id)

    async def _snapshot(self, fid: str, fresh: bool = False) -> _Snapshot:
        """The round's snapshot, one read shared by every request that asks at about the same
        time. `fresh`: not one read before the latest wake-up of this federation's waiters."""
        watch = self._watches.setdefault(fid, _Watch())
        generation = self.core.notifier.generation(fid)
        held = watch.snapshot
        if held is not None:
            taken_at, future = held
            if taken_at == generation and (not future.done() or self._young(future, fresh)):
                return await asyncio.shield(future)
        future = asyncio.ensure_future(asyncio.to_thread(_read_snapshot, self.core, fid))
        watch.snapshot = (generation, future)
        try:
            return await asyncio.shield(future)
        except Exception:
            if watch.snapshot is not None and watch.snapshot[1] is future:
                watch.snapshot = None
            raise

    @staticmethod
    def _young(future: asyncio.Future[_Snapshot], fresh: bool) -> bool:
        if future.cancelled() or future.exception() is not None:
            return False
        return fresh or time.monotonic() - future.result().read_at < _SNAPSHOT_FRESH_S

    @contextlib.contextmanager
    def _waiting(self, fid: str, revision: int) -> Iterator[None]:
        """Count a waiter of `fid`, keeping one re-check task alive while there are any."""
        watch = self._watches.setdefault(fid, _Watch())
        watch.waiters += 1
        if watch.task is None or watch.task.done():
            watch.task = asyncio.create_task(self._recheck(fid, revision))
        try:
            yield
        finally:
            watch.waiters -= 1
            if watch.waiters == 0:
                if watch.task is not None:
                    watch.task.cancel()
                self._watches.pop(fid, None)

    async def _recheck(self, fid: str, revision: int) -> None:
        """Wake `fid`'s waiters when its revision changes behind our back (another process)."""
        seen: int | None = revision
        while True:
            pause = _NOTIFIED_RECHECK_S if self._listening else self.core.settings.poll_recheck_s
            await asyncio.sleep(pause)
            try:
                current = await asyncio.to_thread(current_revision, self.core, fid)
            except Exception as exc:
                if classify(exc) is None:
                    raise
                continue
            if current != seen:
                seen = current
                self.core.notifier.wake(fid)


@dataclass
class _Sweep:
    """One sweep's failures by place: a step, or one federation's part in one."""

    failed: dict[str, Exception] = field(default_factory=dict)

    async def run(self, where: str, work: Awaitable[T]) -> T | None:
        """`work`'s result, or None once its failure is noted against `where`. A fault (the
        database or disk away) ends the sweep: every later step would meet it too."""
        try:
            return await work
        except Exception as exc:
            if classify(exc) is not None:
                raise
            self.failed[where] = exc
            return None

    def lost(self, fid: str, exc: Exception) -> None:
        """A federation the step could not judge; the step goes on without it."""
        self.failed[f"federation {fid}"] = exc


def _read_snapshot(core: Core, fid: str) -> _Snapshot:
    spec = core.spec(fid)
    with core.db.read() as conn:
        status = read_status(conn, spec, fid, None)
        submitted = conn.execute(
            select(updates.c.client_id).where(
                updates.c.federation_id == fid, updates.c.round == status.round
            )
        ).scalars()
        return _Snapshot(status, frozenset(submitted), time.monotonic())


class _Heartbeat:
    """Renews an attempt's lease every third of the lease time until stopped."""

    def __init__(self, core: Core, attempt: Attempt, owner: str) -> None:
        self._core, self._attempt, self._owner = core, attempt, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedtune-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = self._core.settings.lease_s / 3
        while not self._stop.wait(period):
            try:
                if not renew(self._core, self._attempt, self._owner):
                    log.warning(
                        "federation %s round %d: lease lost to another replica",
                        self._attempt.federation_id,
                        self._attempt.round,
                    )
                    return
            except Exception as exc:  # the database is away: the next beat tries again
                if classify(exc) is None:
                    log.error("lease renewal failed", exc_info=exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
