"""Leases on round work: one replica aggregates a round at a time, and a dead one is replaced.

A round moves to `aggregating` in the transaction that accepts its quorum-reaching update (or
in the sweeper, at its deadline). Whoever aggregates it first claims its lease: a row with an
owner and an expiry, claimed and renewed by conditional updates, so it works the same on
SQLite and on PostgreSQL. The owner renews it by heartbeat while it works; a replica that dies
stops renewing, and any replica's sweeper claims the expired lease and aggregates again (the
result is bit-identical: aggregation reads only durable inputs). A failed attempt gives the
lease back with a retry time that backs off, so the same replica (or another) tries again
soon, never in a tight loop. Every attempt is a row of `aggregation_attempts`: the history
keeps the real start of the aggregation and how each attempt ended.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from aggregator_service.services.context import Core, now
from aggregator_service.services.rounds import the_round
from aggregator_service.storage.tables import aggregation_attempts, round_leases, rounds

__all__ = [
    "Attempt",
    "claim",
    "claimable",
    "end_attempt",
    "new_owner",
    "owner_is_dead",
    "renew",
    "retry_delay",
]

# Backoff of a failed aggregation: 1, 2, 4, ... seconds, at most a minute.
_RETRY_MAX_S = 60.0


def new_owner() -> str:
    """This process's name as a lease owner: host, pid and a random tag (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_is_dead(owner: str, me: str) -> bool:
    """True when `owner` was a process on this host that no longer runs: its pid is gone, or
    it is ours but `owner` is not `me` (a container restarted under the same host and pid)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or owner == me:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def retry_delay(failures: int) -> float:
    return float(min(_RETRY_MAX_S, 2.0 ** max(failures - 1, 0)))


@dataclass(frozen=True)
class Attempt:
    """A claimed lease: which round, and the `aggregation_attempts` row that records it."""

    federation_id: str
    round: int
    attempt_id: int
    number: int  # 1 for the first attempt at this round


def claimable(core: Core, owner: str) -> list[tuple[str, int]]:
    """Aggregating rounds nobody holds: no lease yet, an expired one past its retry time, or
    one whose owner is a dead process on this host (a restart takes over at once)."""
    t = now()
    with core.db.read() as conn:
        rows = conn.execute(
            select(
                rounds.c.federation_id,
                rounds.c.number,
                round_leases.c.owner,
                round_leases.c.expires_at,
                round_leases.c.retry_at,
            )
            .select_from(
                rounds.outerjoin(
                    round_leases,
                    and_(
                        round_leases.c.federation_id == rounds.c.federation_id,
                        round_leases.c.round == rounds.c.number,
                    ),
                )
            )
            .where(rounds.c.status == "aggregating")
            .order_by(rounds.c.federation_id, rounds.c.number)
        ).all()
    free = []
    for r in rows:
        if r.owner is None:
            free.append((r.federation_id, r.number))
        elif r.retry_at > t:
            continue
        elif r.expires_at <= t or owner_is_dead(r.owner, owner):
            free.append((r.federation_id, r.number))
    return free


def claim(core: Core, fid: str, number: int, owner: str) -> Attempt | None:
    """Take the round's lease for `core.settings.lease_s` and open an attempt; None when another
    live owner holds it, the retry time has not come, or the round is no longer aggregating."""
    t = now()
    expires = t + core.settings.lease_s
    this = (round_leases.c.federation_id == fid) & (round_leases.c.round == number)
    try:
        with core.db.write() as conn:
            status = conn.execute(select(rounds.c.status).where(the_round(fid, number))).scalar()
            if status != "aggregating":
                return None
            held = conn.execute(select(round_leases).where(this)).first()
            if held is None:
                conn.execute(
                    insert(round_leases).values(
                        federation_id=fid,
                        round=number,
                        owner=owner,
                        expires_at=expires,
                        retry_at=t,
                        attempts=1,
                    )
                )
                count = 1
            else:
                free = (
                    held.expires_at <= t or held.owner == owner or owner_is_dead(held.owner, owner)
                )
                if not free or held.retry_at > t:
                    return None
                taken = conn.execute(
                    update(round_leases)
                    .where(
                        this,
                        round_leases.c.owner == held.owner,
                        round_leases.c.expires_at == held.expires_at,
                    )
                    .values(owner=owner, expires_at=expires, attempts=held.attempts + 1)
                )
                if taken.rowcount != 1:
                    return None
                count = held.attempts + 1
            attempt_id = conn.execute(
                insert(aggregation_attempts).values(
                    federation_id=fid, round=number, owner=owner, number=count, started_at=t
                )
            ).inserted_primary_key
    except IntegrityError:  # another replica inserted the lease first
        return None
    assert attempt_id is not None
    return Attempt(fid, number, int(attempt_id[0]), count)


def renew(core: Core, attempt: Attempt, owner: str) -> bool:
    """Extend the lease; False when it is no longer ours (expired and taken over)."""
    with core.db.write() as conn:
        done = conn.execute(
            update(round_leases)
            .where(
                round_leases.c.federation_id == attempt.federation_id,
                round_leases.c.round == attempt.round,
                round_leases.c.owner == owner,
            )
            .values(expires_at=now() + core.settings.lease_s)
        )
    return done.rowcount == 1


def end_attempt(core: Core, attempt: Attempt, owner: str, outcome: str, error: str = "") -> None:
    """Record how the attempt ended and give the lease back: at once after success, after a
    backoff delay after a failure (anyone may retry then, this replica included)."""
    t = now()
    retry_at = t + (retry_delay(attempt.number) if outcome == "failed" else 0.0)
    with core.db.write() as conn:
        conn.execute(
            update(aggregation_attempts)
            .where(aggregation_attempts.c.id == attempt.attempt_id)
            .values(ended_at=t, outcome=outcome, error=error[:500] or None)
        )
        conn.execute(
            update(round_leases)
            .where(
                round_leases.c.federation_id == attempt.federation_id,
                round_leases.c.round == attempt.round,
                round_leases.c.owner == owner,
            )
            .values(expires_at=t, retry_at=retry_at)
        )
