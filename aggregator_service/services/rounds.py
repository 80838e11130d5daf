"""The round state machine: open -> aggregating -> closed (next round opens) -> ... completed.

Every transition is a conditional UPDATE whose row count says whether this
process made it, so several service processes on one database aggregate each
round exactly once. Aggregation itself is a blocking function (run it in a
thread): it reads only durable inputs, so a round found `aggregating` at
start-up is simply aggregated again, with a bit-identical result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import torch
from sqlalchemy import ColumnElement, Connection, Row, false, func, insert, select, update

from aggregator_service.aggregation import UpdateInput, aggregate
from aggregator_service.aggregation.base import AggregationResult, delta_norms
from aggregator_service.aggregation.deltas import BlobDeltas
from aggregator_service.services import privacy
from aggregator_service.services.context import Core, now
from aggregator_service.services.federations import federation_row, store_state
from aggregator_service.storage.tables import (
    INT_MAX,
    aggregation_attempts,
    clients,
    exclusions,
    federations,
    round_leases,
    rounds,
    state_versions,
    updates,
)
from shared.api import RoundStatus
from shared.blobs import read_state
from shared.spec import AggregationSpec, FederationSpec

__all__ = [
    "RUNNING",
    "Failed",
    "aggregate_finite",
    "aggregate_round",
    "current_revision",
    "due_rounds",
    "federation_status",
    "quorum_rounds",
    "quorum_transition",
    "read_status",
    "round_status",
    "start_aggregation",
    "the_round",
]

log = logging.getLogger("fedtune.server")

Outcome = Literal["closed", "reopened", "superseded"]
# `aggregate`, or what replaces it (the central DP mechanism: services/privacy.py).
Aggregate = Callable[
    [
        Mapping[str, torch.Tensor],
        Sequence[UpdateInput],
        AggregationSpec,
        Mapping[str, torch.Tensor],
    ],
    AggregationResult,
]
# Told of a federation whose rounds could not be judged: (federation id, what went wrong).
Failed = Callable[[str, Exception], None]


def _raise(_fid: str, exc: Exception) -> None:
    raise exc


def read_status(
    conn: Connection, spec: FederationSpec, fid: str, client_id: str | None
) -> RoundStatus:
    """The federation's current round as the API shows it (within the caller's transaction)."""
    fed = federation_row(conn, fid)
    rnd = conn.execute(select(rounds).where(the_round(fid, fed.current_round))).one()
    submitted = client_id is not None and (
        conn.execute(
            select(updates.c.id).where(
                updates.c.federation_id == fid,
                updates.c.round == rnd.number,
                updates.c.client_id == client_id,
            )
        ).first()
        is not None
    )
    return RoundStatus(
        federation_id=fid,
        federation_status=fed.status,
        round=rnd.number,
        total_rounds=spec.rounds.total,
        status=rnd.status,
        global_version=rnd.result_version or rnd.base_version,
        quorum=spec.rounds.quorum,
        min_updates=spec.rounds.min_updates,
        received=rnd.received,
        submitted=submitted,
        deadline_at=datetime.fromtimestamp(rnd.deadline_at, UTC),
        revision=rnd.revision,
    )


def round_status(core: Core, fid: str, client_id: str | None = None) -> RoundStatus:
    spec = core.spec(fid)
    with core.db.read() as conn:
        return read_status(conn, spec, fid, client_id)


def current_revision(core: Core, fid: str) -> int | None:
    """Cheap probe for long-polls: the current round's revision."""
    with core.db.read() as conn:
        return conn.execute(
            select(rounds.c.revision)
            .select_from(
                rounds.join(
                    federations,
                    (federations.c.id == rounds.c.federation_id)
                    & (federations.c.current_round == rounds.c.number),
                )
            )
            .where(rounds.c.federation_id == fid)
        ).scalar()


def start_aggregation(core: Core, fid: str, number: int) -> str | None:
    """open -> aggregating when quorum is met, or deadline passed with min_updates.

    Returns the reason ("quorum" or "deadline") when this call made the transition.
    """
    spec = core.spec(fid)
    t = now()
    base = the_round(fid, number, "open")
    change = {
        "status": "aggregating",
        "aggregation_started_at": t,
        "revision": rounds.c.revision + 1,
    }
    try:
        with core.db.write() as conn:
            for reason, cond in (
                ("quorum", _received_at_least(spec.rounds.quorum)),
                (
                    "deadline",
                    _received_at_least(spec.rounds.min_updates) & (rounds.c.deadline_at <= t),
                ),
            ):
                done = conn.execute(
                    update(rounds).where(base & cond).values(closed_by=reason, **change)
                )
                if done.rowcount == 1:
                    break
            else:
                return None
            # Read once the round's row is ours, in a statement of its own: a pause or cancel
            # that committed while this update waited for the row is seen (a subquery in the
            # update would keep the statement's older snapshot on PostgreSQL).
            if federation_status(conn, fid) != "running":
                raise _NotRunning
    except _NotRunning:  # rolled back: a paused or cancelled federation's rounds stay open
        return None
    log.info("federation %s round %d: aggregating (%s)", fid, number, reason)
    core.notifier.notify(fid)
    return reason


def the_round(fid: str, number: int, status: str | None = None) -> ColumnElement[bool]:
    """Round `number` of federation `fid` (only while it is in `status`, when given)."""
    this = (rounds.c.federation_id == fid) & (rounds.c.number == number)
    return this if status is None else this & (rounds.c.status == status)


class _NotRunning(Exception):
    """The federation was paused or cancelled: its rounds do not close."""


def federation_status(conn: Connection, fid: str) -> str:
    """The federation's status, read in a statement of its own (on PostgreSQL, after the rows
    the transaction has locked: a pause that committed meanwhile is seen)."""
    status: str = conn.execute(
        select(federations.c.status).where(federations.c.id == fid)
    ).scalar_one()
    return status


# The federations whose rounds may close.
RUNNING = select(federations.c.id).where(federations.c.status == "running")


def quorum_transition(conn: Connection, spec: FederationSpec, fid: str, number: int) -> bool:
    """open -> aggregating when the round holds its quorum, inside the caller's transaction
    (the one that accepted an update): no fault between accepting the quorum-reaching update
    and starting the aggregation can leave the round open."""
    done = conn.execute(
        update(rounds)
        .where(the_round(fid, number, "open"), _received_at_least(spec.rounds.quorum))
        .values(
            status="aggregating",
            closed_by="quorum",
            aggregation_started_at=now(),
            revision=rounds.c.revision + 1,
        )
    )
    return done.rowcount == 1


def _received_at_least(n: int) -> ColumnElement[bool]:
    """`received >= n`; a threshold past what the column holds is never met."""
    return rounds.c.received >= n if n <= INT_MAX else false()


def due_rounds(core: Core, failed: Failed = _raise) -> list[tuple[str, int]]:
    """Open rounds past their deadline that hold at least min_updates. A federation whose
    spec cannot be read is passed to `failed` and left out; the others' rounds are listed."""
    return _ready(core, lambda spec, received: received >= spec.rounds.min_updates, True, failed)


def quorum_rounds(core: Core, failed: Failed = _raise) -> list[tuple[str, int]]:
    """Open rounds that hold their quorum: accepting the quorum-reaching update moves a round
    to `aggregating` in the same transaction, so this finds none unless a spec's quorum was
    met some other way; the sweeper closes them all the same. `failed` as in `due_rounds`."""
    return _ready(core, lambda spec, received: received >= spec.rounds.quorum, False, failed)


def _ready(
    core: Core, enough: Callable[[FederationSpec, int], bool], deadline: bool, failed: Failed
) -> list[tuple[str, int]]:
    """Open rounds (past their deadline, with `deadline`) that hold `enough` updates, less
    those reopened (no subset of their updates aggregated to a finite state) that have not
    received an update since: only a new update can change that, and it closes the round by
    itself when it is accepted; the sweepers would aggregate the same updates again and again."""
    cond = (rounds.c.status == "open") & rounds.c.federation_id.in_(RUNNING)
    if deadline:
        cond = cond & (rounds.c.deadline_at <= now())
    reopened = (
        select(func.max(aggregation_attempts.c.ended_at))
        .where(
            aggregation_attempts.c.federation_id == rounds.c.federation_id,
            aggregation_attempts.c.round == rounds.c.number,
            aggregation_attempts.c.outcome == "reopened",
        )
        .scalar_subquery()
    )
    latest = (
        select(func.max(updates.c.received_at))
        .where(
            updates.c.federation_id == rounds.c.federation_id, updates.c.round == rounds.c.number
        )
        .scalar_subquery()
    )
    with core.db.read() as conn:
        rows = conn.execute(
            select(
                rounds.c.federation_id,
                rounds.c.number,
                rounds.c.received,
                reopened.label("reopened_at"),
                latest.label("latest_update_at"),
            ).where(cond)
        ).all()
    ready = []
    for r in rows:
        if r.reopened_at is not None and (r.latest_update_at or 0) <= r.reopened_at:
            continue
        try:
            spec = core.spec(r.federation_id)
        except Exception as exc:
            failed(r.federation_id, exc)
            continue
        if enough(spec, r.received):
            ready.append((r.federation_id, r.number))
    return ready


def aggregate_round(core: Core, fid: str, number: int, owner: str) -> Outcome:
    """Aggregate an `aggregating` round from its durable inputs and close it (blocking), under
    the round's lease held by `owner` (services/leases.py).

    "closed" when this call closed it; "reopened" when no subset of its updates aggregates to
    a finite state; "superseded" when it was not (or no longer) aggregating here, or its lease
    went to another replica before the close.
    """
    spec = core.spec(fid)
    with core.db.read() as conn:
        rnd = conn.execute(select(rounds).where(the_round(fid, number))).first()
        if rnd is None or rnd.status != "aggregating":
            return "superseded"
        server_digest = conn.execute(
            select(state_versions.c.server_state_digest).where(
                state_versions.c.federation_id == fid, state_versions.c.round == number - 1
            )
        ).scalar()
        ups = conn.execute(
            select(updates.c.client_id, updates.c.sha256, updates.c.num_examples, clients.c.name)
            .join(clients, clients.c.id == updates.c.client_id)
            .where(updates.c.federation_id == fid, updates.c.round == number)
        ).all()
    started = time.perf_counter()  # a secure round's unmasking counts as aggregation
    inputs, left_out = _inputs(core, spec, fid, number, ups)
    global_state = read_state(core.blobs.path(rnd.base_version))
    server_state = read_state(core.blobs.path(server_digest)) if server_digest else {}
    run = privacy.PrivateAggregator(spec, number) if spec.privacy is not None else aggregate
    result, excluded = aggregate_finite(global_state, inputs, spec.aggregation, server_state, run)
    excluded = {**excluded, **left_out}
    if result is None:
        return "reopened" if _reopen(core, fid, number, owner, len(inputs)) else "superseded"
    for cid, why in excluded.items():
        log.warning("federation %s round %d: update of %s excluded: %s", fid, number, cid, why)
    closing = _Closing(
        digest=store_state(core, result.state),
        server_digest=store_state(core, result.server_state) if result.server_state else None,
        seconds=time.perf_counter() - started,
        excluded=excluded,
        account=privacy.account_round(core, spec, fid, number, len(ups) - len(excluded)),
    )
    if not _close(core, spec, fid, number, owner, closing):
        return "superseded"
    core.metrics.rounds_aggregated.inc()
    core.metrics.aggregation_seconds.observe(closing.seconds)
    log.info(
        "federation %s round %d closed -> %s (%.3fs)",
        fid,
        number,
        closing.digest[:12],
        closing.seconds,
    )
    core.notifier.notify(fid)
    return "closed"


def _inputs(
    core: Core, spec: FederationSpec, fid: str, number: int, ups: Sequence[Row]
) -> tuple[list[UpdateInput], dict[str, str]]:
    """The strategy's inputs for the round whose updates are `ups`, and the clients left out
    before aggregating (client id -> why). A secure round has one input: the unmasked mean of
    its masked ones. The others are summed in order of organisation name, which repeats
    between runs of a federation where a client id does not."""
    if spec.secure_aggregation is not None:
        from aggregator_service.services.secagg.unmask import secure_inputs  # imports this

        return secure_inputs(core, fid, number)
    inputs = [
        UpdateInput(u.client_id, core.blobs.path(u.sha256), u.num_examples, f"{u.name}\0{u.sha256}")
        for u in ups
    ]
    return inputs, {}


def aggregate_finite(
    global_state: Mapping[str, torch.Tensor],
    inputs: Sequence[UpdateInput],
    spec: AggregationSpec,
    server_state: Mapping[str, torch.Tensor],
    run: Aggregate = aggregate,
) -> tuple[AggregationResult | None, dict[str, str]]:
    """Aggregate (with `run`), never to a non-finite state: (result or None, excluded client
    id -> why).

    When the new state or server state holds NaN/Inf, updates are left out one at a
    time, largest L2 norm first, and the rest aggregated again, until the result is
    finite. None when no update is left (nothing may be published).
    """
    left = list(inputs)
    excluded: dict[str, str] = {}
    norms: dict[str, float] | None = None
    while left:
        result = run(global_state, left, spec, server_state)
        if _finite(result):
            return result, excluded
        if norms is None:  # computed once, and only when a round goes wrong
            deltas = BlobDeltas(inputs)
            norms = dict(zip(deltas.client_ids, delta_norms(deltas), strict=True))
        worst = max(left, key=lambda u: (norms[u.client_id], u.client_id))
        excluded[worst.client_id] = (
            f"largest update norm ({norms[worst.client_id]:.3g}) while the aggregate was non-finite"
        )
        left.remove(worst)
    return None, excluded


def _finite(result: AggregationResult) -> bool:
    tensors = [*result.state.values(), *result.server_state.values()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def _reopen(core: Core, fid: str, number: int, owner: str, count: int) -> bool:
    """aggregating -> open under `owner`'s lease: no subset of the round's `count` inputs
    aggregates to a finite state. The round waits for an operator (the log says why),
    publishing nothing. False when the lease went to another replica (that one decides)."""
    with core.db.write() as conn:
        if not _end_lease(conn, fid, number, owner, now()):
            return False
        done = conn.execute(
            update(rounds)
            .where(the_round(fid, number, "aggregating"))
            .values(status="open", aggregation_started_at=None, revision=rounds.c.revision + 1)
        )
        if done.rowcount != 1:
            return False
    log.error(
        "federation %s round %d: no subset of its %d updates aggregates to a finite state; "
        "nothing published, the round reopens",
        fid,
        number,
        count,
    )
    core.notifier.notify(fid)
    return True


def _end_lease(conn: Connection, fid: str, number: int, owner: str, t: float) -> bool:
    """Within the transaction that ends the round's aggregation: end `owner`'s lease at `t`;
    False when it is no longer `owner`'s (taken over while it worked)."""
    held = conn.execute(
        update(round_leases)
        .where(
            round_leases.c.federation_id == fid,
            round_leases.c.round == number,
            round_leases.c.owner == owner,
        )
        .values(expires_at=t)
    )
    return held.rowcount == 1


@dataclass(frozen=True)
class _Closing:
    """What closing a round records."""

    digest: str
    server_digest: str | None
    seconds: float
    excluded: Mapping[str, str]
    account: privacy.RoundAccount | None


def _close(
    core: Core, spec: FederationSpec, fid: str, number: int, owner: str, closing: _Closing
) -> bool:
    """One transaction: check the lease is `owner`'s, close the round, record the version
    (and the privacy account), open the next or complete."""
    t = now()
    with core.db.write() as conn:
        if not _end_lease(conn, fid, number, owner, t):  # the new owner closes it
            return False
        done = conn.execute(
            update(rounds)
            .where(the_round(fid, number, "aggregating"))
            .values(
                status="closed",
                result_version=closing.digest,
                closed_at=t,
                aggregation_seconds=closing.seconds,
                revision=rounds.c.revision + 1,
            )
        )
        if done.rowcount != 1:
            return False
        conn.execute(
            insert(state_versions).values(
                federation_id=fid,
                round=number,
                digest=closing.digest,
                server_state_digest=closing.server_digest,
            )
        )
        for cid, why in sorted(closing.excluded.items()):
            conn.execute(
                insert(exclusions).values(
                    federation_id=fid, round=number, client_id=cid, reason=why
                )
            )
        exhausted = privacy.record_round(conn, fid, number, closing.account)
        _open_next_or_complete(conn, spec, fid, number, closing.digest, exhausted, t)
    return True


def _open_next_or_complete(
    conn: Connection,
    spec: FederationSpec,
    fid: str,
    number: int,
    digest: str,
    exhausted: bool,
    t: float,
) -> None:
    """Within the closing transaction: complete the federation after its last round (or when
    its privacy budget is `exhausted`), else open round `number + 1` on `digest`. A cancelled
    federation stays cancelled, and no further round opens."""
    fed = update(federations).where(federations.c.id == fid, federations.c.status != "cancelled")
    if number >= spec.rounds.total or exhausted:
        done = conn.execute(fed.values(status="completed"))
        if exhausted and done.rowcount == 1:
            privacy.record_budget_completion(conn, fid, number)
        return
    if conn.execute(fed.values(current_round=number + 1)).rowcount != 1:
        return  # cancelled
    revision: int = conn.execute(
        select(rounds.c.revision).where(the_round(fid, number))
    ).scalar_one()
    conn.execute(
        insert(rounds).values(
            federation_id=fid,
            number=number + 1,
            status="open",
            base_version=digest,
            received=0,
            revision=revision + 1,
            bytes_in=0,
            bytes_out=0,
            opened_at=t,
            deadline_at=t + spec.rounds.deadline_s,
        )
    )
