"""Evaluations: each client's accuracy of a global version on its own validation split.

An update reports the accuracy of the version it trained from, so the final
version's is known only once the clients evaluate it after the federation
completes and report it here. One report per client and version: the same
figures again are answered with the stored one, different figures are refused.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, Row, insert, select
from sqlalchemy.exc import IntegrityError

from aggregator_service.services.access import Principal
from aggregator_service.services.context import Core, now
from aggregator_service.services.errors import Conflict, NotFound
from aggregator_service.services.federations import federation_row, global_version
from aggregator_service.storage.tables import clients, evaluations, state_versions
from shared.api import Evaluation, EvaluationReport

__all__ = ["list_evaluations", "record_evaluation"]


def record_evaluation(
    core: Core, client_id: str, fid: str, report: EvaluationReport
) -> tuple[Evaluation, bool]:
    """Store `report`; returns it as stored and whether it was stored before (a repeat)."""
    try:
        with core.db.write() as conn:
            fed = federation_row(conn, fid)
            version_round = _version_round(conn, fid, report.version)
            existing = _row(conn, fid, client_id, report.version)
            if existing is None:
                conn.execute(
                    insert(evaluations).values(
                        federation_id=fid,
                        client_id=client_id,
                        version=report.version,
                        round=version_round,
                        val_accuracy=report.val_accuracy,
                        val_examples=report.val_examples,
                        received_at=now(),
                    )
                )
            final = fed.status == "completed" and global_version(conn, fed) == report.version
            stored = _row(conn, fid, client_id, report.version)
    except IntegrityError:  # a concurrent first report of the same version won
        return record_evaluation(core, client_id, fid, report)
    assert stored is not None
    if existing is not None and (
        existing.val_accuracy != report.val_accuracy or existing.val_examples != report.val_examples
    ):
        raise Conflict(
            f"this client already reported val_accuracy {existing.val_accuracy} on "
            f"{existing.val_examples} examples for version {report.version[:12]}",
            error="evaluation_exists",
        )
    return _evaluation(stored, final), existing is not None


def list_evaluations(core: Core, fid: str, viewer: Principal) -> list[Evaluation]:
    """Every client's evaluations for the admin; a client sees only its own."""
    with core.db.read() as conn:
        fed = federation_row(conn, fid)
        final_version = global_version(conn, fed) if fed.status == "completed" else None
        query = (
            select(evaluations, clients.c.name)
            .join(clients, clients.c.id == evaluations.c.client_id)
            .where(evaluations.c.federation_id == fid)
            .order_by(evaluations.c.round, evaluations.c.client_id)
        )
        if not viewer.is_admin:
            query = query.where(evaluations.c.client_id == viewer.client_id)
        rows = conn.execute(query).all()
    return [_evaluation(r, r.version == final_version) for r in rows]


def _version_round(conn: Connection, fid: str, version: str) -> int:
    found = conn.execute(
        select(state_versions.c.round)
        .where(state_versions.c.federation_id == fid, state_versions.c.digest == version)
        .order_by(state_versions.c.round)
        .limit(1)
    ).first()
    if found is None:
        raise NotFound(f"version: {version} is no global version of federation {fid}")
    return int(found.round)


def _row(conn: Connection, fid: str, client_id: str, version: str) -> Row | None:
    return conn.execute(
        select(evaluations, clients.c.name)
        .join(clients, clients.c.id == evaluations.c.client_id)
        .where(
            evaluations.c.federation_id == fid,
            evaluations.c.client_id == client_id,
            evaluations.c.version == version,
        )
    ).first()


def _evaluation(row: Row, final: bool) -> Evaluation:
    return Evaluation.model_validate(
        {
            **row._mapping,
            "final": final,
            "received_at": datetime.fromtimestamp(row.received_at, UTC),
        }
    )
