"""Who is calling: the admin token, client API keys, enrollment tokens, revocation.

Only sha256 hashes of tokens are stored; the plaintext is shown once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, null, select, update
from sqlalchemy.engine import Connection, Row

from aggregator_service.services.context import Core, Mint, fresh_secret, hash_token, now
from aggregator_service.services.errors import Forbidden, NotFound, Unauthorized
from aggregator_service.services.federations import federation_row, new_id
from aggregator_service.services.idempotency import KEEP_S, Keep, keep_nothing
from aggregator_service.services.viewers import VIEWER_TOKEN_PREFIX
from aggregator_service.storage.tables import (
    clients,
    enrollment_token_revocations,
    enrollment_tokens,
    previous_keys,
    updates,
)
from shared.api import (
    ClientInfo,
    ClientKeyRotated,
    ClientRegistered,
    ClientRegistration,
    EnrollmentToken,
    EnrollmentTokenInfo,
    EnrollmentTokenRequest,
)

__all__ = [
    "PREVIOUS_KEY_GRACE_S",
    "Principal",
    "authenticate",
    "create_enrollment_token",
    "enrollment_token_id",
    "list_clients",
    "list_enrollment_tokens",
    "refuse_revoked",
    "register_client",
    "revoke_client",
    "revoke_enrollment_token",
    "rotate_key",
]

# How long a client's key stays valid after it rotated it, unless the new key is used first:
# as long as the rotation's answer is replayed to a retry with the same Idempotency-Key.
PREVIOUS_KEY_GRACE_S = KEEP_S


@dataclass(frozen=True)
class Principal:
    """The caller: the admin, or one client of one federation."""

    is_admin: bool
    client_id: str | None = None
    federation_id: str | None = None
    key_hash: str | None = None  # a client's: the hash of the API key it called with

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
    missing, unknown or revoked.

    A client's key from before it rotated its own stays valid until the new key is first used
    (which retires it) or `PREVIOUS_KEY_GRACE_S` has passed.
    """
    if not token:
        raise Unauthorized("missing Authorization: Bearer <token> header")
    digest = hash_token(token)
    if core.is_admin_token(digest):
        return Principal(is_admin=True)
    with core.db.read() as conn:
        row = _key_owner(conn, digest)
    if row is None and token.startswith(VIEWER_TOKEN_PREFIX):
        raise Unauthorized(
            "this is a dashboard viewer token: it opens /dashboard only; the API takes a "
            "client's API key or the admin token"
        )
    if row is None:
        raise Unauthorized("unknown token; register with an enrollment token")
    if row.revoked:
        raise Unauthorized(f"client {row.id} has been revoked")
    if row.rotating is not None:  # the new key's first use retires the key before it
        with core.db.write() as conn:
            conn.execute(delete(previous_keys).where(previous_keys.c.client_id == row.id))
    return Principal(
        is_admin=False, client_id=row.id, federation_id=row.federation_id, key_hash=digest
    )


def _key_owner(conn: Connection, digest: str) -> Row | None:
    """The client whose current key this is, else whose still-valid previous key this is.

    `rotating` is set when a current key's owner has a previous key to retire.
    """
    owner = (clients.c.id, clients.c.federation_id, clients.c.revoked)
    current = conn.execute(
        select(*owner, previous_keys.c.client_id.label("rotating"))
        .select_from(clients.outerjoin(previous_keys, previous_keys.c.client_id == clients.c.id))
        .where(clients.c.key_hash == digest)
    ).first()
    if current is not None:
        return current
    return conn.execute(
        select(*owner, null().label("rotating"))
        .select_from(clients.join(previous_keys, previous_keys.c.client_id == clients.c.id))
        .where(previous_keys.c.key_hash == digest, previous_keys.c.expires_at > now())
    ).first()


def refuse_revoked(conn: Connection, client_id: str, lock: bool = False) -> None:
    """`Unauthorized` when the client was revoked since its request was authenticated (an
    upload streams for a while). With `lock`, in the transaction that would keep what it sent,
    its row stays as read until the commit: a revocation commits before (and is seen here) or
    waits for it (and what it sent was accepted before the revocation)."""
    query = select(clients.c.revoked).where(clients.c.id == client_id)
    if conn.execute(query.with_for_update(read=True) if lock else query).scalar():
        raise Unauthorized(f"client {client_id} has been revoked")


def rotate_key(
    core: Core,
    caller: Principal,
    cid: str,
    mint: Mint = fresh_secret,
    keep: Keep = keep_nothing,
) -> ClientKeyRotated:
    """A new API key for client `cid`, called by that client or the admin.

    The admin's rotation ends the old key at once. A client's own rotation keeps the key it
    called with valid until the new one is first used (at most `PREVIOUS_KEY_GRACE_S`), so a
    retry after a lost answer authenticates and gets the same answer replayed.
    """
    if not caller.is_admin and caller.client_id != cid:
        raise Forbidden("a client may rotate only its own API key")
    api_key = mint("ftk_", 32)
    t = now()
    grace = None if caller.is_admin else datetime.fromtimestamp(t + PREVIOUS_KEY_GRACE_S, UTC)
    with core.db.write() as conn:
        row = conn.execute(
            select(clients.c.federation_id, clients.c.revoked).where(clients.c.id == cid)
        ).first()
        if row is None:
            raise NotFound(f"no client {cid!r}")
        if row.revoked:
            raise Forbidden(f"client {cid} has been revoked; its key cannot be rotated")
        conn.execute(delete(previous_keys).where(previous_keys.c.client_id == cid))
        if not caller.is_admin and caller.key_hash is not None:
            conn.execute(
                insert(previous_keys).values(
                    client_id=cid, key_hash=caller.key_hash, expires_at=t + PREVIOUS_KEY_GRACE_S
                )
            )
        conn.execute(
            update(clients).where(clients.c.id == cid).values(key_hash=hash_token(api_key))
        )
        rotated = ClientKeyRotated(
            client_id=cid,
            federation_id=row.federation_id,
            api_key=api_key,
            previous_key_valid_until=grace,
        )
        keep(conn, rotated)
    return rotated


def enrollment_token_id(token_hash: str) -> str:
    """The public id of an enrollment token: the first 16 hex digits of its stored sha256."""
    return token_hash[:16]


def create_enrollment_token(
    core: Core,
    fid: str,
    req: EnrollmentTokenRequest,
    mint: Mint = fresh_secret,
    keep: Keep = keep_nothing,
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
        issued = EnrollmentToken(
            token=token,
            id=enrollment_token_id(hash_token(token)),
            federation_id=fid,
            uses=req.uses,
            expires_at=datetime.fromtimestamp(t + req.expires_in_s, UTC),
        )
        keep(conn, issued)
    return issued


def register_client(
    core: Core, reg: ClientRegistration, mint: Mint = fresh_secret, keep: Keep = keep_nothing
) -> ClientRegistered:
    """Spend one use of the enrollment token and create the client with a new API key.

    `reg.name` holds no control character (NUL included, which PostgreSQL text cannot hold):
    `ClientRegistration` refuses them on every backend alike."""
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
            revoked = conn.execute(
                select(enrollment_token_revocations.c.token_hash).where(
                    enrollment_token_revocations.c.token_hash == token_hash
                )
            ).first()
            if revoked is not None:
                why = "has been revoked"
            else:
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
        registered = ClientRegistered(
            client_id=cid, api_key=api_key, federation_id=fid, name=reg.name
        )
        keep(conn, registered)
    return registered


def _client_infos(core: Core, fid: str | None = None, cid: str | None = None) -> list[ClientInfo]:
    counted = select(updates.c.client_id, func.count().label("n")).group_by(updates.c.client_id)
    query = select(clients).order_by(clients.c.created_at, clients.c.id)
    if fid is not None:  # count only the updates of the clients listed
        counted = counted.where(updates.c.federation_id == fid)
        query = query.where(clients.c.federation_id == fid)
    if cid is not None:
        counted = counted.where(updates.c.client_id == cid)
        query = query.where(clients.c.id == cid)
    counts = counted.subquery()
    query = query.add_columns(func.coalesce(counts.c.n, 0).label("n")).select_from(
        clients.outerjoin(counts, counts.c.client_id == clients.c.id)
    )
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


def _token_infos(
    conn: Connection, fid: str, token_id: str | None = None
) -> list[EnrollmentTokenInfo]:
    query = (
        select(enrollment_tokens, enrollment_token_revocations.c.revoked_at)
        .select_from(
            enrollment_tokens.outerjoin(
                enrollment_token_revocations,
                enrollment_token_revocations.c.token_hash == enrollment_tokens.c.token_hash,
            )
        )
        .where(enrollment_tokens.c.federation_id == fid)
        .order_by(enrollment_tokens.c.created_at, enrollment_tokens.c.token_hash)
    )
    if token_id is not None:
        query = query.where(func.substr(enrollment_tokens.c.token_hash, 1, 16) == token_id)
    return [
        EnrollmentTokenInfo(
            id=enrollment_token_id(r.token_hash),
            federation_id=r.federation_id,
            uses_left=r.uses_left,
            expires_at=datetime.fromtimestamp(r.expires_at, UTC),
            created_at=datetime.fromtimestamp(r.created_at, UTC),
            revoked=r.revoked_at is not None,
        )
        for r in conn.execute(query).all()
    ]


def list_enrollment_tokens(core: Core, fid: str) -> list[EnrollmentTokenInfo]:
    """Every enrollment token issued for federation `fid`, oldest first, without its secret."""
    with core.db.read() as conn:
        federation_row(conn, fid)
        return _token_infos(conn, fid)


def revoke_enrollment_token(core: Core, fid: str, token_id: str) -> EnrollmentTokenInfo:
    """Revoke an enrollment token of `fid` (idempotent): it allows no more registrations;
    clients that registered with it stay."""
    with core.db.write() as conn:
        federation_row(conn, fid)
        found = conn.execute(
            select(enrollment_tokens.c.token_hash).where(
                enrollment_tokens.c.federation_id == fid,
                func.substr(enrollment_tokens.c.token_hash, 1, 16) == token_id,
            )
        ).all()
        if not found:
            raise NotFound(f"no enrollment token {token_id!r} in federation {fid}")
        t = now()
        for (token_hash,) in found:
            conn.execute(
                update(enrollment_tokens)
                .where(enrollment_tokens.c.token_hash == token_hash)
                .values(uses_left=0)
            )
            known = conn.execute(
                select(enrollment_token_revocations.c.token_hash).where(
                    enrollment_token_revocations.c.token_hash == token_hash
                )
            ).first()
            if known is None:
                conn.execute(
                    insert(enrollment_token_revocations).values(token_hash=token_hash, revoked_at=t)
                )
        return _token_infos(conn, fid, token_id)[0]
