"""Read models: which blob a state download means, bytes served, and the round history."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Row, select, update

from aggregator_service.services.access import Principal
from aggregator_service.services.context import Core
from aggregator_service.services.errors import Conflict, Invalid, NotFound
from aggregator_service.services.federations import federation_row
from aggregator_service.services.privacy import epsilons
from aggregator_service.storage.tables import (
    INT_MAX,
    aggregation_attempts,
    clients,
    exclusions,
    federations,
    rounds,
    state_versions,
    updates,
)
from shared.api import AggregationAttempt, ParticipantRecord, RoundRecord

__all__ = [
    "StateRef",
    "base_ref",
    "count_bytes_out",
    "final_model_ref",
    "get_round",
    "list_rounds",
    "resolve_state",
]

_HEX = re.compile(r"^[0-9a-f]{64}$")
_ROUND = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class StateRef:
    digest: str
    round: int
    fingerprint: str = ""


def resolve_state(core: Core, fid: str, version: str | None) -> StateRef:
    """`version`: None (newest), a round number (0 = initial) or a sha256 of a past state."""
    query = select(state_versions.c.digest, state_versions.c.round).where(
        state_versions.c.federation_id == fid
    )
    if version is None:
        query = query.order_by(state_versions.c.round.desc()).limit(1)
    elif _ROUND.fullmatch(version):
        query = query.where(state_versions.c.round == _round_number(version))
    elif _HEX.match(version.lower()):
        query = query.where(state_versions.c.digest == version.lower())
        query = query.order_by(state_versions.c.round).limit(1)
    else:
        raise Invalid(
            "query.version: expected a sha256 hex digest or a round number (0 = initial state)"
        )
    with core.db.read() as conn:
        federation_row(conn, fid)
        row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"federation {fid} has no global state {version!r}")
    return StateRef(row.digest, row.round)


def _round_number(digits: str) -> int:
    """The round `digits` names; -1 (no round) past what the column holds."""
    number = int(digits) if len(digits.lstrip("0")) <= 10 else -1
    return number if number <= INT_MAX else -1


def base_ref(core: Core, fid: str) -> StateRef:
    with core.db.read() as conn:
        fed = federation_row(conn, fid)
    if fed.base_digest is None:
        raise NotFound(
            "this federation's base is not served (base_source: local); load model.pretrained"
        )
    return StateRef(fed.base_digest, 0, fed.base_fingerprint)


def final_model_ref(core: Core, fid: str) -> StateRef:
    """The final global state of a completed federation; `Conflict` (`not_completed`) before."""
    with core.db.read() as conn:
        fed = federation_row(conn, fid)
        if fed.status != "completed":
            raise Conflict(
                f"federation {fid} is {fed.status}: the final model exists once it has "
                "completed; GET /state serves the current global state",
                error="not_completed",
            )
        row = conn.execute(
            select(state_versions.c.digest, state_versions.c.round)
            .where(state_versions.c.federation_id == fid)
            .order_by(state_versions.c.round.desc())
            .limit(1)
        ).one()
    return StateRef(row.digest, row.round)


def count_bytes_out(core: Core, fid: str, size: int) -> None:
    """Charge served bytes to the federation's current round."""
    current = select(federations.c.current_round).where(federations.c.id == fid)
    with core.db.write() as conn:
        conn.execute(
            update(rounds)
            .where(rounds.c.federation_id == fid, rounds.c.number == current.scalar_subquery())
            .values(bytes_out=rounds.c.bytes_out + size)
        )
    core.metrics.bytes_out.inc(size)


def _only(column: ColumnElement[int], number: int | None) -> list[ColumnElement[bool]]:
    """`column == number`, or no condition when `number` is None."""
    return [] if number is None else [column == number]


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _weighted_means(parts: list[ParticipantRecord]) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    for p in parts:
        for key, value in p.metrics.items():
            sums[key] += value * p.num_examples
            weights[key] += p.num_examples
    return {k: sums[k] / weights[k] for k in sorted(sums) if weights[k] > 0}


def list_rounds(core: Core, fid: str, viewer: Principal) -> list[RoundRecord]:
    """The round history. The admin sees every participant; a client sees the aggregates and
    its own entry only, never the other members' names, hashes or metrics."""
    return _records(core, fid, viewer, None)


def get_round(core: Core, fid: str, number: int, viewer: Principal) -> RoundRecord:
    """One round's record, seen as in `list_rounds`; `NotFound` for a round not (yet) opened."""
    records = _records(core, fid, viewer, number) if number <= INT_MAX else []
    if not records:
        raise NotFound(f"federation {fid} has no round {number}")
    return records[0]


def _records(core: Core, fid: str, viewer: Principal, number: int | None) -> list[RoundRecord]:
    """The records of every round, or of round `number` only."""
    with core.db.read() as conn:
        federation_row(conn, fid)
        round_rows = conn.execute(
            select(rounds)
            .where(rounds.c.federation_id == fid, *_only(rounds.c.number, number))
            .order_by(rounds.c.number)
        ).all()
        update_rows = conn.execute(
            select(updates, clients.c.name)
            .join(clients, clients.c.id == updates.c.client_id)
            .where(updates.c.federation_id == fid, *_only(updates.c.round, number))
            .order_by(updates.c.round, updates.c.client_id)
        ).all()
        excluded_rows = conn.execute(
            select(exclusions).where(
                exclusions.c.federation_id == fid, *_only(exclusions.c.round, number)
            )
        ).all()
        attempt_rows = conn.execute(
            select(aggregation_attempts)
            .where(
                aggregation_attempts.c.federation_id == fid,
                *_only(aggregation_attempts.c.round, number),
            )
            .order_by(aggregation_attempts.c.round, aggregation_attempts.c.number)
        ).all()
        epsilon = epsilons(conn, fid)
    attempts: dict[int, list[AggregationAttempt]] = defaultdict(list)
    for a in attempt_rows:
        attempts[a.round].append(_attempt(a, viewer))
    excluded: dict[int, dict[str, str]] = defaultdict(dict)
    for e in sorted(excluded_rows, key=lambda e: (e.round, e.client_id)):
        excluded[e.round][e.client_id] = e.reason
    by_round: dict[int, list[ParticipantRecord]] = defaultdict(list)
    for u in update_rows:
        by_round[u.round].append(_participant(u))
    return [
        _record(
            r,
            viewer,
            by_round[r.number],
            excluded[r.number],
            attempts[r.number],
            epsilon.get(r.number),
        )
        for r in round_rows
    ]


def _attempt(a: Row, viewer: Principal) -> AggregationAttempt:
    """An aggregation attempt; its error is the admin's to read."""
    return AggregationAttempt(
        number=a.number,
        started_at=datetime.fromtimestamp(a.started_at, UTC),
        ended_at=_ts(a.ended_at),
        outcome=a.outcome,
        error=a.error if viewer.is_admin else None,
    )


def _participant(u: Row) -> ParticipantRecord:
    return ParticipantRecord(
        client_id=u.client_id,
        name=u.name,
        num_examples=u.num_examples,
        bytes=u.bytes,
        sha256=u.sha256,
        metrics=json.loads(u.metrics),
        received_at=datetime.fromtimestamp(u.received_at, UTC),
    )


def _record(
    r: Row,
    viewer: Principal,
    parts: list[ParticipantRecord],
    excluded: dict[str, str],
    attempts: list[AggregationAttempt],
    epsilon: float | None,
) -> RoundRecord:
    """Round `r` as `viewer` sees it: a client sees the aggregates, and of the participants
    and exclusions only its own."""

    def shown(client_id: str) -> bool:
        return viewer.is_admin or client_id == viewer.client_id

    return RoundRecord(
        round=r.number,
        status=r.status,
        base_version=r.base_version,
        result_version=r.result_version,
        participants=[p for p in parts if shown(p.client_id)],
        participant_count=len(parts),
        bytes_in=r.bytes_in,
        bytes_out=r.bytes_out,
        metrics=_weighted_means(parts),
        closed_by=r.closed_by,
        opened_at=datetime.fromtimestamp(r.opened_at, UTC),
        aggregation_started_at=_ts(r.aggregation_started_at),
        closed_at=_ts(r.closed_at),
        aggregation_seconds=r.aggregation_seconds,
        excluded={cid: why for cid, why in excluded.items() if shown(cid)},
        attempts=attempts,
        epsilon=epsilon,
    )
