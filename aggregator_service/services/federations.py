"""Creating federations (building the initial trainable state and base) and describing them."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import torch
from sqlalchemy import Connection, Row, insert, select

from aggregator_service.services.context import Core, now
from aggregator_service.services.errors import Invalid, NotFound
from aggregator_service.services.idempotency import Keep, keep_nothing
from aggregator_service.services.privacy import completed_reason
from aggregator_service.storage.tables import federations, rounds, state_versions
from shared.api import FederationInfo, FederationSummary, TensorInfo
from shared.blobs import write_state
from shared.spec import FederationSpec, PreprocessSpec

__all__ = [
    "create_federation",
    "federation_info",
    "federation_row",
    "global_version",
    "list_federations",
    "new_id",
    "store_state",
]

log = logging.getLogger("fedtune.server")

_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


def new_id(prefix: str, length: int = 10) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


@dataclass(frozen=True)
class _Built:
    spec: FederationSpec
    initial_version: str
    base_digest: str | None
    fingerprint: str
    manifest: dict[str, TensorInfo]
    trainable_params: int
    total_params: int


def store_state(core: Core, tensors: Mapping[str, torch.Tensor]) -> str:
    """Write tensors as a safetensors blob; returns its digest."""
    tmp = core.blobs.new_temp()
    try:
        with open(tmp, "wb") as f:
            write_state(f, tensors)
        return core.blobs.put_file(tmp)
    finally:
        tmp.unlink(missing_ok=True)


def _build(core: Core, spec: FederationSpec) -> _Built:
    from shared.tuning import build  # heavy (torch models); imported when first needed

    try:
        bm = build(spec)
    except (ValueError, OSError, KeyError) as exc:
        raise Invalid(f"cannot build the model: {exc}", error="invalid_spec") from None
    initial = store_state(core, bm.trainable_state())
    base = store_state(core, bm.base_state()) if spec.model.base_source == "server" else None
    return _Built(
        spec=_with_preprocess(spec, bm.preprocess),
        initial_version=initial,
        base_digest=base,
        fingerprint=bm.base_fingerprint(),
        manifest=dict(bm.manifest()),
        trainable_params=bm.num_trainable,
        total_params=bm.num_total,
    )


def _with_preprocess(spec: FederationSpec, preprocess: PreprocessSpec) -> FederationSpec:
    """`spec` with the preprocessing its base uses filled in, where the spec leaves it out:
    a client may not see the files it came from (a checkpoint folder only here)."""
    if spec.model.preprocess is not None:
        return spec
    model = spec.model.model_copy(update={"preprocess": preprocess})
    return spec.model_copy(update={"model": model})


def create_federation(
    core: Core, spec: FederationSpec, keep: Keep = keep_nothing
) -> FederationInfo:
    """Build the model, store initial state and base, and open round 1 (blocking: run in a thread).

    The stored spec is the posted one with the base's preprocessing filled in."""
    built = _build(core, spec)
    spec = built.spec
    fid = new_id("fed_")
    t = now()
    with core.db.write() as conn:
        conn.execute(
            insert(federations).values(
                id=fid,
                name=spec.name,
                spec=spec.model_dump_json(),
                status="running",
                current_round=1,
                manifest=json.dumps({k: v.model_dump() for k, v in built.manifest.items()}),
                base_fingerprint=built.fingerprint,
                base_digest=built.base_digest,
                initial_version=built.initial_version,
                trainable_params=built.trainable_params,
                total_params=built.total_params,
                created_at=t,
            )
        )
        conn.execute(
            insert(state_versions).values(federation_id=fid, round=0, digest=built.initial_version)
        )
        conn.execute(
            insert(rounds).values(
                federation_id=fid,
                number=1,
                status="open",
                base_version=built.initial_version,
                received=0,
                revision=1,
                bytes_in=0,
                bytes_out=0,
                opened_at=t,
                deadline_at=t + spec.rounds.deadline_s,
            )
        )
        info = _describe(conn, federation_row(conn, fid), spec)
        keep(conn, info)
    log.info("created federation %s (%s)", fid, spec.name)
    return info


def federation_row(conn: Connection, fid: str) -> Row:
    row = conn.execute(select(federations).where(federations.c.id == fid)).first()
    if row is None:
        raise NotFound(f"no federation {fid!r}")
    return row


def global_version(conn: Connection, fed: Row) -> str:
    """The newest global state: the open round's base, or the final result once completed."""
    rnd = conn.execute(
        select(rounds.c.base_version, rounds.c.result_version).where(
            rounds.c.federation_id == fed.id, rounds.c.number == fed.current_round
        )
    ).one()
    return str(rnd.result_version or rnd.base_version)


def federation_info(core: Core, fid: str) -> FederationInfo:
    with core.db.read() as conn:
        fed = federation_row(conn, fid)
        return _describe(conn, fed, core.spec(fid))


def _describe(conn: Connection, fed: Row, spec: FederationSpec) -> FederationInfo:
    """The federation `fed` (its row) as the API shows it, read within the caller's transaction."""
    version = global_version(conn, fed)
    reason = completed_reason(conn, fed.id, fed.status)
    manifest = {k: TensorInfo.model_validate(v) for k, v in json.loads(fed.manifest).items()}
    return FederationInfo(
        id=fed.id,
        name=fed.name,
        spec=spec,
        status=fed.status,
        current_round=fed.current_round,
        global_version=version,
        manifest=manifest,
        base_fingerprint=fed.base_fingerprint,
        base_available=fed.base_digest is not None,
        trainable_params=fed.trainable_params,
        total_params=fed.total_params,
        created_at=datetime.fromtimestamp(fed.created_at, UTC),
        completed_reason=reason,
    )


def list_federations(core: Core) -> list[FederationSummary]:
    """Every federation, oldest first."""
    with core.db.read() as conn:
        rows = conn.execute(
            select(
                federations.c.id,
                federations.c.name,
                federations.c.status,
                federations.c.current_round,
                federations.c.created_at,
            ).order_by(federations.c.created_at, federations.c.id)
        ).all()
    return [
        FederationSummary(
            id=row.id,
            name=row.name,
            status=row.status,
            current_round=row.current_round,
            total_rounds=core.spec(row.id).rounds.total,
            created_at=datetime.fromtimestamp(row.created_at, UTC),
        )
        for row in rows
    ]
