"""Secure aggregation's phase transitions on the service: a secure round moves on from
advertise to share, input and unmask when each phase is complete or past its deadline (from a
client's step, or from the sweeper through `due` and `advance`), restarts with a new attempt
when too few clients are left, and ends in `unmask.finish`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from sqlalchemy import Connection, select, update

from aggregator_service.services.context import Core, now
from aggregator_service.services.rounds import RUNNING, federation_status
from aggregator_service.services.secagg.round import (
    OF_ROUND,
    Round,
    accused,
    as_read,
    bump,
    load_round,
    restart,
    steps,
)
from aggregator_service.services.secagg.unmask import finish
from aggregator_service.storage.tables import rounds, secagg_rounds
from shared.api import SecaggPhase

__all__ = ["advance", "advance_round", "due"]

log = logging.getLogger("fedtune.server")


def due(core: Core) -> list[tuple[str, int]]:
    """Secure rounds of running federations whose phase deadline has passed (for the sweeper).
    A paused federation's round is frozen: its clients' steps are refused, so a deadline
    passing then would throw away the attempt's progress."""
    with core.db.read() as conn:
        rows = conn.execute(
            select(secagg_rounds.c.federation_id, secagg_rounds.c.round)
            .join(rounds, OF_ROUND)
            .where(
                secagg_rounds.c.phase != "done",
                secagg_rounds.c.deadline_at <= now(),
                rounds.c.status == "open",
                rounds.c.federation_id.in_(RUNNING),
            )
        ).all()
    return [(r.federation_id, r.round) for r in rows]


def advance(core: Core, fid: str, number: int) -> bool:
    """Move a secure round on if its phase is complete or past its deadline; True when it
    has just started aggregating (the caller spawns the aggregation)."""
    with core.db.write() as conn:
        rnd = load_round(conn, core.spec(fid), fid, number, lock=True)
        if rnd is None or rnd.phase == "done" or federation_status(conn, fid) != "running":
            return False
        ready = advance_round(conn, core, rnd)
    core.notifier.notify(fid)
    return ready


def advance_round(conn: Connection, core: Core, rnd: Round) -> bool:
    """Within the caller's transaction: move `rnd` as far as it can go now."""
    spec = core.spec(rnd.fid)
    fresh = load_round(conn, spec, rnd.fid, rnd.number, lock=True)
    assert fresh is not None
    rnd = fresh
    t = now()
    late = t >= rnd.deadline_at
    least = spec.rounds.min_updates
    if rnd.phase == "advertise":
        keyed = sorted(steps(conn, rnd, "keys"))
        if len(keyed) >= spec.rounds.quorum or (late and len(keyed) >= least):
            rnd = _move(conn, rnd, "share", t, cohort=keyed)
        else:
            return False
    if rnd.phase == "share":
        shared = sorted(set(steps(conn, rnd, "shares")) & set(rnd.cohort))
        if len(shared) == len(rnd.cohort) or t >= rnd.deadline_at:
            if len(shared) < least:
                restart(conn, rnd, f"only {len(shared)} of the cohort shared keys")
                return False
            rnd = _move(conn, rnd, "input", t, u1=shared)
        else:
            return False
    if rnd.phase == "input":
        accusations = accused(conn, rnd)
        expected = set(rnd.u1) - set(accusations)
        sent = set(steps(conn, rnd, "input")) & expected
        if sent == expected or t >= rnd.deadline_at:
            if len(sent) < least:
                restart(conn, rnd, f"only {len(sent)} masked inputs arrived")
                return False
            rnd = _move(conn, rnd, "unmask", t, u2=sorted(sent))
        else:
            return False
    if rnd.phase == "unmask":
        unmask = steps(conn, rnd, "unmask")
        if not set(unmask) >= set(rnd.u2) and t < rnd.deadline_at:
            return False
        return finish(conn, rnd, unmask, accused(conn, rnd), t)
    return False


def _move(conn: Connection, rnd: Round, phase: SecaggPhase, t: float, **sets: Any) -> Round:
    """`rnd` enters `phase` at `t`, which stays open for the spec's time for it."""
    deadline = t + rnd.sa.phase_s(phase)
    values: dict[str, Any] = {"phase": phase, "deadline_at": deadline}
    values.update({k: json.dumps(v) for k, v in sets.items()})
    done = conn.execute(update(secagg_rounds).where(*as_read(rnd)).values(**values))
    assert done.rowcount == 1  # the caller read the row with `load_round(lock=True)`
    bump(conn, rnd)
    log.info(
        "federation %s round %d: secure aggregation attempt %d -> %s",
        rnd.fid,
        rnd.number,
        rnd.attempt,
        phase,
    )
    return dataclasses.replace(rnd, phase=phase, deadline_at=deadline, **sets)
