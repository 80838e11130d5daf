"""Who is calling: the admin token, client API keys, enrollment tokens, revocation.

Only sha256 hashes of tokens are stored; the plaintext is shown once.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, insert, select, update

from aggregator_service.services.context import Core, Mint, fresh_secret, hash_token, now
from aggregator_service.services.errors import Forbidden, Invalid, NotFound, Unauthorized
from aggregator_service.services.federations import federation_row, new_id
from aggregator_service.storage.tables import clients, enrollment_tokens, updates
from shared.api import (
    ClientInfo,
    ClientRegistered,
    ClientRegistration,
    EnrollmentToken,
    EnrollmentTokenRequest,
)

__all__ = [
    "Principal",
    "authenticate",
    "create_enrollment_token",
    "list_clients",
    "register_client",
    "revoke_client",
]


@dataclass(frozen=True)
class Principal:
    """The caller: the admin, or one client of one federation."""

    is_admin: bool
    client_id: str | None = None
    federation_id: str | None = None

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this operation needs the admin token")

    def require_member(self, fid: str, allow_admin: bool = True) -> None:
        if self.is_admin and allow_admin:
            return
        if self.is_admin:
            raise Forbidden("only a client of this federation may do this")
        if self.federation_id != fid:
            raise Forbidden(f"this API key does not belong to federation {fid}")


def authenticate(core: Core, token: str | None) -> Principal:
    """Resolve the bearer token (None: no `Authorization: Bearer` header); `Unauthorized` when
    missing, unknown or revoked."""
    if not token:
        raise Unauthorized("missing Authorization: Bearer <token> header")
    digest = hash_token(token)
    if hmac.compare_digest(digest, core.admin_token_hash):
        return Principal(is_admin=True)
    with core.db.read() as conn:
        row = conn.execute(
            select(clients.c.id, clients.c.federation_id, clients.c.revoked).where(
                clients.c.key_hash == digest
            )
        ).first()
    if row is None:
        raise Unauthorized("unknown token; register with an enrollment token")
    if row.revoked:
        raise Unauthorized(f"client {row.id} has been revoked")
    return Principal(is_admin=False, client_id=row.id, federation_id=row.federation_id)


def create_enrollment_token(
    core: Core, fid: str, req: EnrollmentTokenRequest, mint: Mint = fresh_secret
) -> EnrollmentToken:
    token = mint("fte_", 24)
    t = now()
    with core.db.write() as conn:
        federation_row(conn, fid)
        conn.execute(
            insert(enrollment_tokens).values(
                token_hash=hash_token(token),
                federation_id=fid,
                uses_left=req.uses,
                expires_at=t + req.expires_in_s,
                created_at=t,
            )
        )
    return EnrollmentToken(
        token=token,
        federation_id=fid,
        uses=req.uses,
        expires_at=datetime.fromtimestamp(t + req.expires_in_s, UTC),
    )


def register_client(
    core: Core, reg: ClientRegistration, mint: Mint = fresh_secret
) -> ClientRegistered:
    """Spend one use of the enrollment token and create the client with a new API key."""
    if "\x00" in reg.name:  # PostgreSQL text cannot hold it; refused on every backend alike
        raise Invalid("name: must not contain a NUL character")
    token_hash = hash_token(reg.enrollment_token)
    api_key = mint("ftk_", 32)
    cid = new_id("cli_")
    t = now()
    with core.db.write() as conn:
        spent = conn.execute(
            update(enrollment_tokens)
            .where(
                enrollment_tokens.c.token_hash == token_hash,
                enrollment_tokens.c.uses_left > 0,
                enrollment_tokens.c.expires_at > t,
            )
            .values(uses_left=enrollment_tokens.c.uses_left - 1)
        )
        if spent.rowcount != 1:
            row = conn.execute(
                select(enrollment_tokens).where(enrollment_tokens.c.token_hash == token_hash)
            ).first()
            if row is None:
                raise Unauthorized("unknown enrollment token", error="enrollment_invalid")
            why = "has expired" if row.expires_at <= t else "has no uses left"
            raise Forbidden(
                f"enrollment token {why}; ask the admin for a new one", error="enrollment_invalid"
            )
        fid: str = conn.execute(
            select(enrollment_tokens.c.federation_id).where(
                enrollment_tokens.c.token_hash == token_hash
            )
        ).scalar_one()
        conn.execute(
            insert(clients).values(
                id=cid,
                name=reg.name,
                federation_id=fid,
                key_hash=hash_token(api_key),
                created_at=t,
                revoked=False,
            )
        )
    return ClientRegistered(client_id=cid, api_key=api_key, federation_id=fid, name=reg.name)


def _client_infos(core: Core, fid: str | None = None, cid: str | None = None) -> list[ClientInfo]:
    counts = (
        select(updates.c.client_id, func.count().label("n"))
        .group_by(updates.c.client_id)
        .subquery()
    )
    query = (
        select(clients, func.coalesce(counts.c.n, 0).label("n"))
        .select_from(clients.outerjoin(counts, counts.c.client_id == clients.c.id))
        .order_by(clients.c.created_at, clients.c.id)
    )
    if fid is not None:
        query = query.where(clients.c.federation_id == fid)
    if cid is not None:
        query = query.where(clients.c.id == cid)
    with core.db.read() as conn:
        rows = conn.execute(query).all()
    return [
        ClientInfo(
            client_id=r.id,
            name=r.name,
            federation_id=r.federation_id,
            created_at=datetime.fromtimestamp(r.created_at, UTC),
            revoked=bool(r.revoked),
            updates=int(r.n),
        )
        for r in rows
    ]


def list_clients(core: Core, fid: str | None) -> list[ClientInfo]:
    return _client_infos(core, fid=fid)


def revoke_client(core: Core, cid: str) -> ClientInfo:
    """Revoke a client's key (idempotent); its accepted updates stay."""
    with core.db.write() as conn:
        conn.execute(
            update(clients)
            .where(clients.c.id == cid, clients.c.revoked.is_(False))
            .values(revoked=True, revoked_at=now())
        )
    found = _client_infos(core, cid=cid)
    if not found:
        raise NotFound(f"no client {cid!r}")
    return found[0]
