"""Pausing, resuming and cancelling a federation (admin).

- `paused`: no update is accepted (`Conflict` `federation_paused`, nothing stored) and no deadline
  closes a round. A round already `aggregating` still finishes (its inputs are durable), and
  the next round opens. On resume the open round's deadline restarts: it gets the spec's whole
  `deadline_s` from the moment of resuming, as clients that waited out the pause need the time
  to train. A secure round is frozen the same way: no phase ends by its deadline while paused,
  and on resume the current phase gets its whole time again.
- `cancelled`: final. No update is accepted (`Conflict` `federation_cancelled`), no round closes by
  its deadline and no further round opens; clients stop.

Each transition is one conditional UPDATE of the federation's status, so of two replicas (or
two admins) racing, one makes it and the other sees the result. The same transaction bumps
the current round's revision first, which wakes long-polls on every replica and orders the
transition against uploads and aggregations (they lock the round row first too). Asking for
the state a federation is already in changes nothing and answers it again.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from sqlalchemy import Connection, case, select, update

from aggregator_service.services.context import Core, now
from aggregator_service.services.errors import Conflict
from aggregator_service.services.federations import federation_info, federation_row
from aggregator_service.storage.tables import federations, rounds, secagg_rounds
from shared.api import FederationInfo, FederationStatus, RoundStatus
from shared.spec import FederationSpec

__all__ = ["cancel_federation", "pause_federation", "refuse_unless_running", "resume_federation"]

log = logging.getLogger("fedtune.server")

_REFUSALS: dict[str, tuple[str, str]] = {
    "completed": ("federation_completed", "the federation has completed"),
    "cancelled": ("federation_cancelled", "the federation was cancelled by its operator"),
    "paused": (
        "federation_paused",
        "the federation is paused by its operator; wait until it resumes and send the update again",
    ),
}


def refuse_unless_running(fid: str, status: str, round: RoundStatus | None = None) -> None:
    """Raise the `Conflict` an update to a federation in `status` meets (none when running)."""
    if status in _REFUSALS:
        error, detail = _REFUSALS[status]
        raise Conflict(f"{detail} ({fid})", error=error, round=round)


def pause_federation(core: Core, fid: str) -> FederationInfo:
    return _transition(core, fid, "paused", allowed_from=("running",))


def resume_federation(core: Core, fid: str) -> FederationInfo:
    return _transition(core, fid, "running", allowed_from=("paused",))


def cancel_federation(core: Core, fid: str) -> FederationInfo:
    return _transition(core, fid, "cancelled", allowed_from=("running", "paused"))


class _Lost(Exception):
    """Another replica changed the status between our read and our conditional update."""


def _transition(
    core: Core, fid: str, target: FederationStatus, allowed_from: Collection[str]
) -> FederationInfo:
    resumed = core.spec(fid) if target == "running" else None
    try:
        with core.db.write() as conn:
            status = federation_row(conn, fid).status
            if status == target:
                return federation_info(core, fid)
            if status not in allowed_from:
                raise _refusal(fid, target, status)
            _bump_current_round(conn, fid, resumed)
            done = conn.execute(
                update(federations)
                .where(federations.c.id == fid, federations.c.status.in_(allowed_from))
                .values(status=target)
            )
            if done.rowcount != 1:
                raise _Lost
    except _Lost:  # rolled back: the winner's status stands
        info = federation_info(core, fid)
        if info.status != target:
            raise _refusal(fid, target, info.status) from None
        return info
    log.info("federation %s: %s", fid, target)
    core.notifier.notify(fid)
    return federation_info(core, fid)


def _refusal(fid: str, target: str, status: str) -> Conflict:
    error, detail = _REFUSALS.get(status, ("conflict", f"it is {status}"))
    if status == "running":
        error, detail = "federation_running", "it is running (not paused)"
    return Conflict(f"cannot make federation {fid} {target}: {detail}", error=error)


def _bump_current_round(conn: Connection, fid: str, resumed: FederationSpec | None) -> None:
    """Change the current round's revision; on a resume (`resumed`, the federation's spec),
    restart the deadlines of the current round when it is open: the round's and its secure
    aggregation phase's, each its whole time from now."""
    current = select(federations.c.current_round).where(federations.c.id == fid)
    this = (rounds.c.federation_id == fid) & (rounds.c.number == current.scalar_subquery())
    conn.execute(update(rounds).where(this).values(revision=rounds.c.revision + 1))
    if resumed is None:
        return
    t = now()
    conn.execute(
        update(rounds)
        .where(this & (rounds.c.status == "open"))
        .values(deadline_at=t + resumed.rounds.deadline_s)
    )
    sa = resumed.secure_aggregation
    if sa is not None:
        phases = ("advertise", "share", "input", "unmask")
        conn.execute(
            update(secagg_rounds)
            .where(
                secagg_rounds.c.federation_id == fid,
                secagg_rounds.c.round == current.scalar_subquery(),
                secagg_rounds.c.phase.in_(phases),
            )
            .values(
                deadline_at=case(
                    {p: t + sa.phase_s(p) for p in phases}, value=secagg_rounds.c.phase
                )
            )
        )
