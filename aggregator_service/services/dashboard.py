"""What the dashboard shows: the federations, and one federation's live round, history and
organisations, read through the same service functions as the API.

Nothing here carries a secret: no API key, token or hash of one; update digests stay out too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime

from pydantic import BaseModel, Field
from sqlalchemy import Connection

from aggregator_service.services.access import Principal, list_clients
from aggregator_service.services.context import Core
from aggregator_service.services.federations import list_federations
from aggregator_service.services.history import list_rounds
from aggregator_service.services.rounds import read_status
from aggregator_service.services.secagg.round import load_round, steps
from shared.api import FederationSummary, RoundRecord, RoundStatus
from shared.spec import FederationSpec

__all__ = [
    "FederationRow",
    "HistoryRow",
    "LiveRound",
    "LiveSecure",
    "LiveView",
    "OrganisationRow",
    "federation_rows",
    "live_view",
    "organisation_labels",
]

# The dashboard sees what the admin sees of the history (every participant), read-only.
_READER = Principal(is_admin=True)
# The metrics plotted per round, as the clients report them.
PLOTTED = ("val_accuracy", "train_loss")


class FederationRow(FederationSummary):
    """One federation in the dashboard's list: the API's summary and what it trains."""

    family: str
    arch: str
    method: str


class LiveRound(BaseModel):
    number: int
    total: int
    status: str = Field(description="open | aggregating | closed")
    received: int
    quorum: int
    min_updates: int
    deadline_at: datetime | None
    seconds_left: float | None = Field(description="Until the deadline, while the round is open.")


class LiveSecure(BaseModel):
    """The secure aggregation protocol of the open round: where it is and who has answered."""

    attempt: int = Field(description="Grows when the protocol restarts.")
    phase: str = Field(description="advertise | share | input | unmask | done")
    answered: int = Field(description="Clients that took this phase's step so far.")
    expected: int = Field(
        description="Clients the phase waits for: the quorum while keys are advertised, then "
        "the cohort, those who shared keys, and those whose masked input counts."
    )
    seconds_left: float | None = Field(
        description="Until the phase's deadline, while the federation runs."
    )
    events: list[str] = Field(
        description="The round's latest events (restarts, named senders and holders)."
    )


class HistoryRow(BaseModel):
    round: int
    status: str
    participants: int
    closed_by: str | None
    aggregation_seconds: float | None
    bytes_in: int
    bytes_out: int
    metrics: dict[str, float] = Field(description="Example-weighted means of the plotted metrics.")
    by_organisation: dict[str, dict[str, float]] = Field(
        description="Each participant's plotted metrics, by its organisation's label."
    )
    epsilon: float | None = Field(
        default=None, description="With central privacy: ε once the round closed."
    )


class OrganisationRow(BaseModel):
    name: str
    label: str = Field(
        description="The name, followed by the client id when another organisation's name or "
        "label is the same: names need not be unique."
    )
    client_id: str
    updates: int = Field(description="Accepted updates.")
    last_seen: datetime | None = Field(description="When its latest update was accepted.")
    revoked: bool


class LiveView(BaseModel):
    server_time: datetime
    federation_id: str
    name: str
    status: str
    round: LiveRound
    secure: LiveSecure | None = Field(
        default=None, description="With secure aggregation, while the round is open."
    )
    history: list[HistoryRow]
    organisations: list[OrganisationRow]
    epsilon: float | None = Field(
        default=None, description="With central privacy: ε after the latest closed round."
    )
    max_epsilon: float | None = Field(
        default=None, description="With central privacy: the budget (privacy.max_epsilon)."
    )


def federation_rows(core: Core) -> list[FederationRow]:
    """Every federation, newest first."""
    rows = []
    for f in reversed(list_federations(core)):
        spec = core.spec(f.id)
        rows.append(
            FederationRow(
                **f.model_dump(),
                family=spec.model.family,
                arch=spec.model.arch,
                method=spec.method.name,
            )
        )
    return rows


def _plotted(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k in PLOTTED}


def organisation_labels(names: Mapping[str, str]) -> dict[str, str]:
    """A distinct label for each client id in `names` (id -> organisation name): its name, with
    its id appended while the label is shared, so that no organisation hides another."""
    labels = dict(names)
    while True:
        counts = Counter(labels.values())
        shared = [cid for cid, label in labels.items() if counts[label] > 1]
        if not shared:
            return labels
        for cid in shared:
            labels[cid] = f"{labels[cid]} ({cid})"


def _history_row(r: RoundRecord, labels: Mapping[str, str]) -> HistoryRow:
    return HistoryRow(
        round=r.round,
        status=r.status,
        participants=r.participant_count,
        closed_by=r.closed_by,
        aggregation_seconds=r.aggregation_seconds,
        bytes_in=r.bytes_in,
        bytes_out=r.bytes_out,
        epsilon=r.epsilon,
        metrics=_plotted(r.metrics),
        by_organisation={
            labels.get(p.client_id, p.name): _plotted(p.metrics) for p in r.participants
        },
    )


def _live_round(status: RoundStatus, t: datetime) -> LiveRound:
    left = None
    running = status.status == "open" and status.federation_status == "running"
    if running and status.deadline_at is not None:
        left = max(0.0, (status.deadline_at - t).total_seconds())
    return LiveRound(
        number=status.round,
        total=status.total_rounds,
        status=status.status,
        received=status.received,
        quorum=status.quorum,
        min_updates=status.min_updates,
        deadline_at=status.deadline_at,
        seconds_left=left,
    )


# The step each phase waits for, as the service records it.
_STEP = {"advertise": "keys", "share": "shares", "input": "input", "unmask": "unmask"}
# How many of a round's events the dashboard shows.
_EVENTS = 5


def _live_secure(
    conn: Connection, spec: FederationSpec, status: RoundStatus, t: datetime
) -> LiveSecure | None:
    """The open round's protocol, when the federation uses secure aggregation."""
    if spec.secure_aggregation is None or status.status != "open":
        return None
    rnd = load_round(conn, spec, status.federation_id, status.round)
    if rnd is None:  # no client has advertised keys yet
        return LiveSecure(
            attempt=1,
            phase="advertise",
            answered=0,
            expected=spec.rounds.quorum,
            seconds_left=None,
            events=[],
        )
    expected = {
        "advertise": spec.rounds.quorum,
        "share": len(rnd.cohort),
        "input": len(rnd.u1),
        "unmask": len(rnd.u2),
        "done": len(rnd.u2),
    }[rnd.phase]
    done = rnd.phase == "done"
    answered = expected if done else len(steps(conn, rnd, _STEP[rnd.phase]))
    running = status.federation_status == "running" and not done
    left = max(0.0, rnd.deadline_at - t.timestamp()) if running else None
    return LiveSecure(
        attempt=rnd.attempt,
        phase=rnd.phase,
        answered=answered,
        expected=expected,
        seconds_left=left,
        events=rnd.events[-_EVENTS:],
    )


def live_view(core: Core, fid: str) -> LiveView:
    """The federation as the dashboard shows it now; `NotFound` when there is none."""
    spec = core.spec(fid)
    t = datetime.now(UTC)
    with core.db.read() as conn:
        status = read_status(conn, spec, fid, None)
        secure = _live_secure(conn, spec, status, t)
    history = list_rounds(core, fid, _READER)
    members = list_clients(core, fid)
    labels = organisation_labels({c.client_id: c.name for c in members})
    last_seen: dict[str, datetime] = {}
    for r in history:
        for p in r.participants:
            seen = last_seen.get(p.client_id)
            last_seen[p.client_id] = p.received_at if seen is None else max(seen, p.received_at)
    return LiveView(
        server_time=t,
        federation_id=fid,
        name=spec.name,  # the federation is named after its spec
        status=status.federation_status,
        round=_live_round(status, t),
        secure=secure,
        history=[_history_row(r, labels) for r in history],
        organisations=[
            OrganisationRow(
                name=c.name,
                label=labels[c.client_id],
                client_id=c.client_id,
                updates=c.updates,
                last_seen=last_seen.get(c.client_id),
                revoked=c.revoked,
            )
            for c in members
        ],
        epsilon=next((r.epsilon for r in reversed(history) if r.epsilon is not None), None),
        max_epsilon=spec.privacy.max_epsilon if spec.privacy is not None else None,
    )
