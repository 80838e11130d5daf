"""A secure round's state on the service: its row (`Round`), the steps its clients took,
the writes every phase makes to the row (a new revision, an event, a restart) and the state a
client reads (`state`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, insert, select, update

from aggregator_service.services.context import Core, now
from aggregator_service.services.errors import Conflict, NotFound
from aggregator_service.services.rounds import read_status, the_round
from aggregator_service.storage.tables import (
    INT_MAX,
    federations,
    rounds,
    secagg_rounds,
    secagg_steps,
)
from shared.api import SecaggPeer, SecaggPhase, SecaggState
from shared.secagg.graph import neighbours, threshold_for
from shared.secagg.protocol import context
from shared.spec import FederationSpec, SecureAggregationSpec

__all__ = [
    "OF_ROUND",
    "Round",
    "accused",
    "add_event",
    "as_read",
    "bump",
    "current_attempts",
    "load_round",
    "record_step",
    "restart",
    "secure_spec",
    "state",
    "steps",
]

log = logging.getLogger("fedtune.server")

_ORDER: tuple[SecaggPhase, ...] = ("advertise", "share", "input", "unmask", "done")
# Joins a secure round's row to its round's row.
OF_ROUND = (rounds.c.federation_id == secagg_rounds.c.federation_id) & (
    rounds.c.number == secagg_rounds.c.round
)


def secure_spec(core: Core, fid: str) -> SecureAggregationSpec:
    sa = core.spec(fid).secure_aggregation
    if sa is None:
        raise Conflict(
            f"federation {fid} does not use secure aggregation; upload deltas with "
            "PUT /v1/federations/{fid}/rounds/{r}/update",
            error="not_secure",
        )
    return sa


@dataclass(frozen=True)
class Round:
    """One secure round's row, its lists parsed."""

    fid: str
    number: int
    attempt: int
    phase: SecaggPhase
    deadline_at: float
    cohort: list[str]
    u1: list[str]
    u2: list[str]
    events: list[str]
    secrets: dict[str, dict[str, str]]
    seed: int
    sa: SecureAggregationSpec

    @classmethod
    def from_row(cls, row: Row[Any], spec: FederationSpec) -> Round:
        assert spec.secure_aggregation is not None
        return cls(
            row.federation_id,
            row.round,
            row.attempt,
            row.phase,
            row.deadline_at,
            json.loads(row.cohort or "[]"),
            json.loads(row.u1 or "[]"),
            json.loads(row.u2 or "[]"),
            json.loads(row.events),
            json.loads(row.secrets or "{}"),
            spec.seed,
            spec.secure_aggregation,
        )

    @property
    def context(self) -> str:
        return context(self.fid, self.number, self.attempt)

    @functools.cached_property
    def graph(self) -> dict[str, list[str]]:
        """The cohort's neighbour graph: public, drawn from the spec's seed and the attempt
        (drawn once per `Round`; a phase change makes a new one)."""
        return neighbours(self.cohort, self.sa.neighbours, f"{self.seed}/{self.context}")

    def threshold(self, client_id: str) -> int:
        return threshold_for(len(self.graph[client_id]), self.sa.threshold)

    def reached(self, phase: SecaggPhase) -> bool:
        return _ORDER.index(self.phase) >= _ORDER.index(phase)


def load_round(
    conn: Connection, spec: FederationSpec, fid: str, number: int, lock: bool = False
) -> Round | None:
    """Round `number`'s secure round, if it has started. With `lock` (a transaction that reads
    it in order to change it) the round's row, then this one, are held until the commit, in
    the order a pause or resume takes them; SQLite's writer holds the whole database anyway."""
    this = (secagg_rounds.c.federation_id == fid) & (secagg_rounds.c.round == number)
    query = select(secagg_rounds).where(this)
    if lock:
        conn.execute(select(rounds.c.number).where(the_round(fid, number)).with_for_update())
        query = query.with_for_update()
    row = conn.execute(query).first()
    return None if row is None else Round.from_row(row, spec)


def record_step(
    conn: Connection,
    rnd: Round,
    client_id: str,
    step: str,
    body: bytes | str,
    payload: Any,
) -> bool:
    """Store what `client_id` sent for `step`; True when the same body was stored before.
    A different body for a step already taken is a `Conflict`."""
    raw = body.encode() if isinstance(body, str) else body
    digest = hashlib.sha256(raw).hexdigest()
    prior = conn.execute(
        select(secagg_steps.c.digest).where(
            secagg_steps.c.federation_id == rnd.fid,
            secagg_steps.c.round == rnd.number,
            secagg_steps.c.attempt == rnd.attempt,
            secagg_steps.c.client_id == client_id,
            secagg_steps.c.step == step,
        )
    ).scalar()
    if prior is not None:
        if prior != digest:
            raise Conflict(
                f"this client already sent a different {step.split(':')[0]} for round "
                f"{rnd.number} (attempt {rnd.attempt}); it cannot be replaced",
                error="secagg_step_conflict",
            )
        return True
    conn.execute(
        insert(secagg_steps).values(
            federation_id=rnd.fid,
            round=rnd.number,
            attempt=rnd.attempt,
            client_id=client_id,
            step=step,
            digest=digest,
            payload=json.dumps(payload, sort_keys=True),
            received_at=now(),
        )
    )
    return False


def steps(conn: Connection, rnd: Round, step: str) -> dict[str, Any]:
    rows = conn.execute(
        select(secagg_steps.c.client_id, secagg_steps.c.payload).where(
            secagg_steps.c.federation_id == rnd.fid,
            secagg_steps.c.round == rnd.number,
            secagg_steps.c.attempt == rnd.attempt,
            secagg_steps.c.step == step,
        )
    ).all()
    return {r.client_id: json.loads(r.payload) for r in rows}


def accused(conn: Connection, rnd: Round) -> dict[str, str]:
    """Clients named by a recipient whose share from them failed authentication -> why."""
    rows = conn.execute(
        select(secagg_steps.c.client_id, secagg_steps.c.payload).where(
            secagg_steps.c.federation_id == rnd.fid,
            secagg_steps.c.round == rnd.number,
            secagg_steps.c.attempt == rnd.attempt,
            secagg_steps.c.step.like("complaint:%"),
        )
    ).all()
    out: dict[str, str] = {}
    for r in sorted(rows, key=lambda r: r.client_id):
        p = json.loads(r.payload)
        out.setdefault(
            p["accused"],
            f"its encrypted share for {r.client_id} failed authentication ({p['reason']}); "
            "left out of the secure round",
        )
    return out


# -- writes every phase makes to the round's row ------------------------------------------
# (here rather than in phases: unmask.finish restarts too, and phases imports unmask)


def bump(conn: Connection, rnd: Round) -> None:
    """Change the round's revision, so long-polls on the round wake on each phase change."""
    conn.execute(
        update(rounds).where(the_round(rnd.fid, rnd.number)).values(revision=rounds.c.revision + 1)
    )


def add_event(conn: Connection, rnd: Round, event: str) -> None:
    current = conn.execute(
        select(secagg_rounds.c.events).where(
            secagg_rounds.c.federation_id == rnd.fid, secagg_rounds.c.round == rnd.number
        )
    ).scalar_one()
    events = [*json.loads(current), event]
    conn.execute(
        update(secagg_rounds)
        .where(secagg_rounds.c.federation_id == rnd.fid, secagg_rounds.c.round == rnd.number)
        .values(events=json.dumps(events))
    )


def restart(conn: Connection, rnd: Round, why: str) -> None:
    """The protocol cannot go on: start again with fresh keys (attempt + 1). Nothing changes
    unless the round is still in the attempt and phase `rnd` was read in."""
    moved = conn.execute(
        update(secagg_rounds)
        .where(*as_read(rnd))
        .values(
            attempt=rnd.attempt + 1,
            phase="advertise",
            deadline_at=now() + rnd.sa.phase_s("advertise"),
            cohort=None,
            u1=None,
            u2=None,
            secrets=None,
        )
    )
    if moved.rowcount != 1:
        return
    event = f"attempt {rnd.attempt} failed in phase {rnd.phase}: {why}; restarting"
    log.warning("federation %s round %d: %s", rnd.fid, rnd.number, event)
    add_event(conn, rnd, event)
    bump(conn, rnd)


def as_read(rnd: Round) -> tuple[ColumnElement[bool], ...]:
    """The secure round's row while it is in the attempt and phase `rnd` was read in."""
    return (
        secagg_rounds.c.federation_id == rnd.fid,
        secagg_rounds.c.round == rnd.number,
        secagg_rounds.c.attempt == rnd.attempt,
        secagg_rounds.c.phase == rnd.phase,
    )


def current_attempts(core: Core) -> dict[str, float]:
    """Federation id -> the protocol attempt of its current round, while that round is open
    and its secure aggregation has started, for running and paused federations (a cancelled
    one's round stays open but is over)."""
    live = select(federations.c.id).where(federations.c.status.in_(("running", "paused")))
    with core.db.read() as conn:
        rows = conn.execute(
            select(secagg_rounds.c.federation_id, secagg_rounds.c.attempt)
            .join(rounds, OF_ROUND)
            .where(rounds.c.status == "open", rounds.c.federation_id.in_(live))
        ).all()
    return {r.federation_id: float(r.attempt) for r in rows}


# -- what a client reads ------------------------------------------------------------------


def state(core: Core, fid: str, number: int, client_id: str | None) -> SecaggState:
    spec = core.spec(fid)
    secure_spec(core, fid)
    with core.db.read() as conn:
        status = read_status(conn, spec, fid, None)
        if number > INT_MAX or number > status.round:
            raise NotFound(f"round {number} has not opened; the current round is {status.round}")
        rnd = load_round(conn, spec, fid, number)
        if rnd is None:
            deadline = datetime.fromtimestamp(now(), UTC)
            return SecaggState(
                federation_id=fid,
                round=number,
                attempt=1,
                phase="advertise",
                deadline_at=deadline,
                threshold=None,
                in_cohort=False,
            )
        done = _done_steps(conn, rnd, client_id) if client_id is not None else []
        keys = steps(conn, rnd, "keys") if rnd.reached("share") else {}
    member = client_id if client_id in rnd.cohort else None
    return SecaggState(
        federation_id=fid,
        round=number,
        attempt=rnd.attempt,
        phase=rnd.phase,
        deadline_at=datetime.fromtimestamp(rnd.deadline_at, UTC),
        threshold=None if member is None else rnd.threshold(member),
        neighbours=[] if member is None else _peers(rnd, member, keys),
        in_cohort=member is not None,
        cohort=rnd.cohort,
        shared=rnd.u1,
        survivors=rnd.u2,
        done=done,
        events=rnd.events,
    )


def _peers(rnd: Round, client_id: str, keys: dict[str, Any]) -> list[SecaggPeer]:
    return [
        SecaggPeer(client_id=p, c_pk=keys[p]["c_pk"], s_pk=keys[p]["s_pk"])
        for p in rnd.graph[client_id]
    ]


def _done_steps(conn: Connection, rnd: Round, client_id: str) -> list[str]:
    return sorted(
        conn.execute(
            select(secagg_steps.c.step).where(
                secagg_steps.c.federation_id == rnd.fid,
                secagg_steps.c.round == rnd.number,
                secagg_steps.c.attempt == rnd.attempt,
                secagg_steps.c.client_id == client_id,
            )
        ).scalars()
    )
