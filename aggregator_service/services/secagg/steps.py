"""Secure aggregation's client steps on the service, each in one write transaction
(`client_step`): advertise keys (step 0), send the encrypted shares (step 1), fetch the shares
addressed to the client, name the sender of a share that failed authentication, and send the
unmasking shares (step 3). The masked input (step 2) is an upload: see `inputs`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from aggregator_service.services.access import refuse_revoked
from aggregator_service.services.context import Core, now
from aggregator_service.services.errors import Conflict, Forbidden, Invalid
from aggregator_service.services.lifecycle import refuse_unless_running
from aggregator_service.services.rounds import read_status
from aggregator_service.services.secagg.phases import advance_round
from aggregator_service.services.secagg.round import (
    Round,
    add_event,
    load_round,
    record_step,
    secure_spec,
)
from aggregator_service.storage.tables import INT_MAX, secagg_rounds, secagg_shares
from shared.api import (
    SecaggComplaint,
    SecaggIncomingShare,
    SecaggKeys,
    SecaggPhase,
    SecaggReceipt,
    SecaggShares,
    SecaggUnmask,
)
from shared.secagg.keys import KeyAgreementError, public_from_hex

__all__ = [
    "SHARE_CIPHERTEXT_HEX",
    "ClientStep",
    "advertise",
    "client_step",
    "complain",
    "incoming_shares",
    "send_shares",
    "send_unmask",
]

log = logging.getLogger("fedtune.server")

# nonce (12) + two 66-byte field elements + GCM tag (16), in hex
SHARE_CIPHERTEXT_HEX = 2 * (12 + 2 * 66 + 16)


def _open_round(conn: Connection, core: Core, fid: str, number: int, create: bool) -> Round:
    """The secure round `number` of `fid`, which must be the current, open round of a running
    federation (created in phase advertise on the first key advertisement)."""
    spec = core.spec(fid)
    sa = secure_spec(core, fid)
    # locked before the status is read: a pause that commits meanwhile is seen here
    rnd = load_round(conn, spec, fid, number, lock=True) if number <= INT_MAX else None
    status = read_status(conn, spec, fid, None)
    refuse_unless_running(fid, status.federation_status, status)
    if number > INT_MAX or number != status.round or status.status != "open":
        raise Conflict(
            f"round {number} is not open for secure aggregation; the current round is "
            f"{status.round} ({status.status})",
            error="round_closed",
            round=status,
        )
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
            deadline_at=now() + sa.phase_s("advertise"),
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
    (the first advertisement creates it): the client must not have been revoked since it was
    authenticated, the attempt and phase must be current and the client among those who take
    part. Once the step is recorded the round moves on as far as it can, the step's `receipt`
    is filled in and, after the commit, long-polls wake."""
    with core.db.write() as conn:
        refuse_revoked(conn, client_id)
        rnd = _open_round(conn, core, fid, number, create=phase == "advertise")
        _check_attempt(rnd, attempt, phase)
        if phase != "advertise":
            _member(rnd, client_id, phase)
        step = ClientStep(conn, rnd, client_id, name)
        yield step
        advance_round(conn, core, rnd)
        step.receipt = _receipt(conn, rnd, step.name, step.duplicate)
    core.notifier.notify(fid)


def advertise(core: Core, fid: str, number: int, client_id: str, body: SecaggKeys) -> SecaggReceipt:
    """Step 0: a client's two public keys (the first creates the secure round)."""
    if body.c_pk == body.s_pk:
        raise Invalid("c_pk and s_pk must be two different keys", error="invalid_keys")
    for name, key in (("c_pk", body.c_pk), ("s_pk", body.s_pk)):
        try:
            public_from_hex(key)
        except KeyAgreementError:
            raise Invalid(
                f"{name} is a low-order X25519 point: no secret can be agreed with it; "
                "advertise freshly generated keys",
                error="invalid_keys",
            ) from None
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
            add_event(step.conn, rnd, event)
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
