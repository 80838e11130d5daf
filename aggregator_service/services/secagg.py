"""Secure aggregation's rounds on the service (SecAgg+, Bell et al. 2020; Bonawitz et al. 2017).

A secure round stays `open` while its protocol runs in four steps, each with its deadline
(spec.secure_aggregation): advertise keys (the cohort), share keys (U1: who shared), masked
input (U2: whose input counts), unmasking (the survivors' shares). The service routes the
encrypted shares it cannot read, and once the survivors have answered it rebuilds the
survivors' self-mask seeds and the dropped clients' mask keys (services/secagg_unmask.py),
moves the round to `aggregating` and the usual aggregation sums the unmasked inputs.

The service never sees one client's delta: it cannot check, clip or weigh one, and so it
cannot refuse a poisoned update. Masked inputs never enter `received` while the protocol
runs, so the round's usual quorum and deadline do not close a secure round; they are listed
as the round's updates when it starts aggregating.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from aggregator_service.services.context import Core, now
from aggregator_service.services.errors import Conflict, Forbidden, Invalid, NotFound
from aggregator_service.services.lifecycle import refuse_unless_running
from aggregator_service.services.rounds import (
    RUNNING,
    federation_status,
    read_status,
    the_round,
)
from aggregator_service.storage.tables import (
    INT_MAX,
    rounds,
    secagg_rounds,
    secagg_shares,
    secagg_steps,
    updates,
)
from shared.api import (
    SecaggComplaint,
    SecaggIncomingShare,
    SecaggKeys,
    SecaggPeer,
    SecaggPhase,
    SecaggReceipt,
    SecaggShares,
    SecaggState,
    SecaggUnmask,
)
from shared.secagg.graph import neighbours, threshold_for
from shared.secagg.protocol import context
from shared.spec import FederationSpec, SecureAggregationSpec

__all__ = [
    "SHARE_CIPHERTEXT_HEX",
    "ClientStep",
    "Round",
    "advance",
    "advertise",
    "client_step",
    "complain",
    "due",
    "incoming_shares",
    "load_round",
    "record_step",
    "secure_spec",
    "send_shares",
    "send_unmask",
    "state",
]

log = logging.getLogger("fedtune.server")

# nonce (12) + two 66-byte field elements + GCM tag (16), in hex
SHARE_CIPHERTEXT_HEX = 2 * (12 + 2 * 66 + 16)
_ORDER: tuple[SecaggPhase, ...] = ("advertise", "share", "input", "unmask", "done")


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


def load_round(conn: Connection, spec: FederationSpec, fid: str, number: int) -> Round | None:
    row = conn.execute(
        select(secagg_rounds).where(
            secagg_rounds.c.federation_id == fid, secagg_rounds.c.round == number
        )
    ).first()
    return None if row is None else Round.from_row(row, spec)


def _open_round(conn: Connection, core: Core, fid: str, number: int, create: bool) -> Round:
    """The secure round `number` of `fid`, which must be the current, open round of a running
    federation (created in phase advertise on the first key advertisement)."""
    spec = core.spec(fid)
    sa = secure_spec(core, fid)
    status = read_status(conn, spec, fid, None)
    refuse_unless_running(fid, status.federation_status, status)
    if number > INT_MAX or number != status.round or status.status != "open":
        raise Conflict(
            f"round {number} is not open for secure aggregation; the current round is "
            f"{status.round} ({status.status})",
            error="round_closed",
            round=status,
        )
    rnd = load_round(conn, spec, fid, number)
    if rnd is not None:
        return rnd
    if not create:
        raise Conflict(
            f"round {number}'s secure aggregation has not started: advertise keys first",
            error="secagg_not_started",
        )
    conn.execute(
        insert(secagg_rounds).values(
            federation_id=fid,
            round=number,
            attempt=1,
            phase="advertise",
            deadline_at=now() + sa.advertise_s,
            events="[]",
        )
    )
    found = load_round(conn, spec, fid, number)
    assert found is not None
    return found


def _check_attempt(rnd: Round, attempt: int, phase: SecaggPhase) -> None:
    if attempt != rnd.attempt:
        raise Conflict(
            f"attempt {attempt} of round {rnd.number} is over; the protocol restarted at "
            f"attempt {rnd.attempt} (fetch the round's secure-aggregation state)",
            error="secagg_attempt_over",
        )
    if rnd.phase != phase:
        raise Conflict(
            f"round {rnd.number} is in phase {rnd.phase}, not {phase}",
            error="secagg_wrong_phase",
        )


def _member(rnd: Round, client_id: str, phase: SecaggPhase) -> None:
    """Refuse a client that takes no part in `phase` (after advertise, which any may join)."""
    of, what = {
        "share": (rnd.cohort, "the clients that advertised keys"),
        "input": (rnd.u1, "the clients that shared keys"),
        "unmask": (rnd.u2, "the clients whose masked input counts"),
    }[phase]
    if client_id not in of:
        raise Forbidden(
            f"this client is not among {what} of round {rnd.number} (attempt {rnd.attempt}); "
            "wait for the next round",
            error="not_in_cohort",
        )


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


def _steps(conn: Connection, rnd: Round, step: str) -> dict[str, Any]:
    rows = conn.execute(
        select(secagg_steps.c.client_id, secagg_steps.c.payload).where(
            secagg_steps.c.federation_id == rnd.fid,
            secagg_steps.c.round == rnd.number,
            secagg_steps.c.attempt == rnd.attempt,
            secagg_steps.c.step == step,
        )
    ).all()
    return {r.client_id: json.loads(r.payload) for r in rows}


def _accused(conn: Connection, rnd: Round) -> dict[str, str]:
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


def _receipt(conn: Connection, rnd: Round, step: str, duplicate: bool) -> SecaggReceipt:
    """What a step answers, in the step's transaction: the phase it left the attempt in."""
    now_at = conn.execute(
        select(secagg_rounds.c.attempt, secagg_rounds.c.phase).where(
            secagg_rounds.c.federation_id == rnd.fid, secagg_rounds.c.round == rnd.number
        )
    ).one()
    return SecaggReceipt(
        step=step.split(":")[0],
        attempt=rnd.attempt,
        duplicate=duplicate,
        phase=now_at.phase if now_at.attempt == rnd.attempt else rnd.phase,
    )


# -- the steps ----------------------------------------------------------------------------


@dataclass
class ClientStep:
    """A client's step, in its write transaction."""

    conn: Connection
    rnd: Round
    client_id: str
    name: str
    duplicate: bool = False
    receipt: SecaggReceipt = dataclasses.field(init=False)

    def record(self, body: bytes | str, payload: Any) -> bool:
        """`record_step` for this client; True when the same body was stored before."""
        self.duplicate = record_step(self.conn, self.rnd, self.client_id, self.name, body, payload)
        return self.duplicate


@contextmanager
def client_step(
    core: Core,
    fid: str,
    number: int,
    client_id: str,
    attempt: int,
    phase: SecaggPhase,
    name: str,
) -> Iterator[ClientStep]:
    """One write transaction for a client's step `name` in `phase` of the open round `number`
    (the first advertisement creates it): the attempt and phase must be current and the client
    among those who take part. Once the step is recorded the round moves on as far as it can,
    the step's `receipt` is filled in and, after the commit, long-polls wake."""
    with core.db.write() as conn:
        rnd = _open_round(conn, core, fid, number, create=phase == "advertise")
        _check_attempt(rnd, attempt, phase)
        if phase != "advertise":
            _member(rnd, client_id, phase)
        step = ClientStep(conn, rnd, client_id, name)
        yield step
        _advance(conn, core, rnd)
        step.receipt = _receipt(conn, rnd, step.name, step.duplicate)
    core.notifier.notify(fid)


def advertise(core: Core, fid: str, number: int, client_id: str, body: SecaggKeys) -> SecaggReceipt:
    """Step 0: a client's two public keys (the first creates the secure round)."""
    if body.c_pk == body.s_pk:
        raise Invalid("c_pk and s_pk must be two different keys", error="invalid_keys")
    with client_step(core, fid, number, client_id, body.attempt, "advertise", "keys") as step:
        step.record(body.model_dump_json(), body.model_dump(mode="json"))
    return step.receipt


def send_shares(
    core: Core, fid: str, number: int, client_id: str, body: SecaggShares
) -> SecaggReceipt:
    """Step 1: one encrypted share per neighbour, exactly, for the service to route."""
    with client_step(core, fid, number, client_id, body.attempt, "share", "shares") as step:
        want = set(step.rnd.graph[client_id])
        got = [s.recipient for s in body.shares]
        if len(set(got)) != len(got) or set(got) != want:
            raise Invalid(
                f"shares must go to exactly this client's {len(want)} neighbours "
                f"({', '.join(sorted(want))}), once each",
                error="invalid_shares",
            )
        bad = [s.recipient for s in body.shares if len(s.ciphertext) != SHARE_CIPHERTEXT_HEX]
        if bad:
            raise Invalid(
                f"the share for {bad[0]} is not {SHARE_CIPHERTEXT_HEX} hex digits "
                "(nonce, two AES-GCM-encrypted field elements and the tag)",
                error="invalid_shares",
            )
        if not step.record(body.model_dump_json(), len(got)) and body.shares:
            this_attempt = {"federation_id": fid, "round": number, "attempt": step.rnd.attempt}
            step.conn.execute(
                insert(secagg_shares),
                [
                    {
                        **this_attempt,
                        "sender": client_id,
                        "recipient": s.recipient,
                        "ciphertext": s.ciphertext,
                    }
                    for s in body.shares
                ],
            )
    return step.receipt


def incoming_shares(
    core: Core, fid: str, number: int, client_id: str, attempt: int
) -> list[SecaggIncomingShare]:
    """The shares addressed to `client_id` by the neighbours that shared keys (phase input on)."""
    secure_spec(core, fid)
    with core.db.read() as conn:
        rnd = load_round(conn, core.spec(fid), fid, number)
        if rnd is None or rnd.attempt != attempt or not rnd.reached("input"):
            raise Conflict(
                f"round {number} attempt {attempt} has no shares to hand out now",
                error="secagg_wrong_phase",
            )
        _member(rnd, client_id, "input")
        rows = conn.execute(
            select(secagg_shares.c.sender, secagg_shares.c.ciphertext).where(
                secagg_shares.c.federation_id == fid,
                secagg_shares.c.round == number,
                secagg_shares.c.attempt == attempt,
                secagg_shares.c.recipient == client_id,
            )
        ).all()
    u1 = set(rnd.u1)
    return [
        SecaggIncomingShare(sender=r.sender, ciphertext=r.ciphertext)
        for r in sorted(rows, key=lambda r: r.sender)
        if r.sender in u1
    ]


def complain(
    core: Core, fid: str, number: int, client_id: str, body: SecaggComplaint
) -> SecaggReceipt:
    """A recipient names the sender of a share that failed authentication: the sender is left
    out of the round (its masks are removed as a dropped client's) and the history says why."""
    name = f"complaint:{body.accused}"
    with client_step(core, fid, number, client_id, body.attempt, "input", name) as step:
        rnd = step.rnd
        if body.accused not in rnd.graph[client_id] or body.accused not in rnd.u1:
            raise Invalid(
                f"{body.accused} sent this client no share in round {number}",
                error="invalid_complaint",
            )
        payload = body.model_dump(mode="json")
        if not step.record(body.model_dump_json(), payload):
            event = (
                f"attempt {rnd.attempt}: the share {body.accused} sent to {client_id} failed "
                f"AES-GCM authentication at its recipient ({body.reason}); {body.accused} is "
                "left out of the round"
            )
            log.warning("federation %s round %d: %s", fid, number, event)
            _add_event(step.conn, rnd, event)
    return step.receipt


def send_unmask(
    core: Core, fid: str, number: int, client_id: str, body: SecaggUnmask
) -> SecaggReceipt:
    """Step 3: a survivor's shares of its neighbours' b (survivors) or s_sk (dropped)."""
    with client_step(core, fid, number, client_id, body.attempt, "unmask", "unmask") as step:
        mine = set(step.rnd.graph[client_id]) & set(step.rnd.u1)
        survivors = set(step.rnd.u2)
        seen: set[str] = set()
        for s in body.shares:
            if s.owner not in mine or s.owner in seen:
                raise Invalid(
                    f"a share of {s.owner}'s secret is not this client's to send (once each, "
                    "for neighbours that shared keys)",
                    error="invalid_unmask",
                )
            want = "b" if s.owner in survivors else "s"
            if s.kind != want:
                raise Invalid(
                    f"{s.owner} {'sent' if want == 'b' else 'did not send'} a masked input: "
                    f"send the share of its {'b' if want == 'b' else 's_sk'}, never the other",
                    error="invalid_unmask",
                )
            seen.add(s.owner)
        payload = [s.model_dump(mode="json") for s in body.shares]
        step.record(body.model_dump_json(), payload)
    return step.receipt


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
        keys = _steps(conn, rnd, "keys") if rnd.reached("share") else {}
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


# -- phase transitions ----------------------------------------------------------------------


def due(core: Core) -> list[tuple[str, int]]:
    """Secure rounds of running federations whose phase deadline has passed (for the sweeper).
    A paused federation's round is frozen: its clients' steps are refused, so a deadline
    passing then would throw away the attempt's progress."""
    with core.db.read() as conn:
        rows = conn.execute(
            select(secagg_rounds.c.federation_id, secagg_rounds.c.round)
            .join(
                rounds,
                (rounds.c.federation_id == secagg_rounds.c.federation_id)
                & (rounds.c.number == secagg_rounds.c.round),
            )
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
        rnd = load_round(conn, core.spec(fid), fid, number)
        if rnd is None or rnd.phase == "done" or federation_status(conn, fid) != "running":
            return False
        ready = _advance(conn, core, rnd)
    core.notifier.notify(fid)
    return ready


def _advance(conn: Connection, core: Core, rnd: Round) -> bool:
    """Within the caller's transaction: move `rnd` as far as it can go now."""
    from aggregator_service.services.secagg_unmask import finish

    spec = core.spec(rnd.fid)
    sa = rnd.sa
    fresh = load_round(conn, spec, rnd.fid, rnd.number)
    assert fresh is not None
    rnd = fresh
    t = now()
    late = t >= rnd.deadline_at
    least = spec.rounds.min_updates
    if rnd.phase == "advertise":
        keyed = sorted(_steps(conn, rnd, "keys"))
        if len(keyed) >= spec.rounds.quorum or (late and len(keyed) >= least):
            rnd = _move(conn, rnd, "share", t + sa.share_keys_s, cohort=keyed)
        else:
            return False
    if rnd.phase == "share":
        shared = sorted(set(_steps(conn, rnd, "shares")) & set(rnd.cohort))
        if len(shared) == len(rnd.cohort) or t >= rnd.deadline_at:
            if len(shared) < least:
                restart(conn, rnd, f"only {len(shared)} of the cohort shared keys")
                return False
            rnd = _move(conn, rnd, "input", t + sa.masked_input_s, u1=shared)
        else:
            return False
    if rnd.phase == "input":
        accused = _accused(conn, rnd)
        expected = set(rnd.u1) - set(accused)
        sent = set(_steps(conn, rnd, "input")) & expected
        if sent == expected or t >= rnd.deadline_at:
            if len(sent) < least:
                restart(conn, rnd, f"only {len(sent)} masked inputs arrived")
                return False
            rnd = _move(conn, rnd, "unmask", t + sa.unmask_s, u2=sorted(sent))
        else:
            return False
    if rnd.phase == "unmask":
        unmask = _steps(conn, rnd, "unmask")
        if not set(unmask) >= set(rnd.u2) and t < rnd.deadline_at:
            return False
        return finish(conn, rnd, unmask, _accused(conn, rnd), t)
    return False


def _move(conn: Connection, rnd: Round, phase: SecaggPhase, deadline: float, **sets: Any) -> Round:
    values: dict[str, Any] = {"phase": phase, "deadline_at": deadline}
    values.update({k: json.dumps(v) for k, v in sets.items()})
    done = conn.execute(
        update(secagg_rounds)
        .where(
            secagg_rounds.c.federation_id == rnd.fid,
            secagg_rounds.c.round == rnd.number,
            secagg_rounds.c.attempt == rnd.attempt,
            secagg_rounds.c.phase == rnd.phase,
        )
        .values(**values)
    )
    assert done.rowcount == 1  # the caller's write transaction holds the row
    _bump(conn, rnd)
    log.info(
        "federation %s round %d: secure aggregation attempt %d -> %s",
        rnd.fid,
        rnd.number,
        rnd.attempt,
        phase,
    )
    return dataclasses.replace(rnd, phase=phase, deadline_at=deadline, **sets)


def _bump(conn: Connection, rnd: Round) -> None:
    """Change the round's revision, so long-polls on the round wake on each phase change."""
    conn.execute(
        update(rounds).where(the_round(rnd.fid, rnd.number)).values(revision=rounds.c.revision + 1)
    )


def _add_event(conn: Connection, rnd: Round, event: str) -> None:
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
    """The protocol cannot go on: start again with fresh keys (attempt + 1)."""
    event = f"attempt {rnd.attempt} failed in phase {rnd.phase}: {why}; restarting"
    log.warning("federation %s round %d: %s", rnd.fid, rnd.number, event)
    _add_event(conn, rnd, event)
    conn.execute(
        update(secagg_rounds)
        .where(secagg_rounds.c.federation_id == rnd.fid, secagg_rounds.c.round == rnd.number)
        .values(
            attempt=rnd.attempt + 1,
            phase="advertise",
            deadline_at=now() + rnd.sa.advertise_s,
            cohort=None,
            u1=None,
            u2=None,
            secrets=None,
        )
    )
    _bump(conn, rnd)


def list_updates(conn: Connection, rnd: Round) -> dict[str, Any]:
    """The masked inputs of the survivors (client id -> sha256, bytes, num_examples, metrics)."""
    inputs = _steps(conn, rnd, "input")
    return {c: inputs[c] for c in rnd.u2}


def insert_updates(conn: Connection, rnd: Round, t: float) -> int:
    """List the survivors' masked inputs as the round's updates; their total bytes."""
    total = 0
    for cid, p in sorted(list_updates(conn, rnd).items()):
        conn.execute(
            insert(updates).values(
                federation_id=rnd.fid,
                round=rnd.number,
                client_id=cid,
                sha256=p["sha256"],
                bytes=p["bytes"],
                num_examples=p["num_examples"],
                metrics=json.dumps(p["metrics"], sort_keys=True),
                received_at=t,
            )
        )
        total += int(p["bytes"])
    return total
