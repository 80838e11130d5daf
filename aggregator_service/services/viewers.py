"""Read-only viewer tokens: the admin issues them for the dashboard, never for the API.

Only the sha256 of a token is stored; the token itself is shown once, at issue. The dashboard
accepts the admin token or a viewer token that has not been revoked (`authenticate_viewer`);
the API's `authenticate` knows nothing of viewer tokens, so they open no API route.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Row

from aggregator_service.services.context import Core, Mint, fresh_secret, hash_token, now
from aggregator_service.services.errors import NotFound, Unauthorized
from aggregator_service.services.federations import new_id
from aggregator_service.services.idempotency import Keep, keep_nothing
from aggregator_service.storage.tables import viewer_tokens

__all__ = [
    "MAX_TOKEN_CHARS",
    "VIEWER_TOKEN_PREFIX",
    "Viewer",
    "ViewerToken",
    "ViewerTokenInfo",
    "ViewerTokenRequest",
    "authenticate_viewer",
    "create_viewer_token",
    "list_viewer_tokens",
    "revoke_viewer_token",
]

# What every viewer token starts with (the API names it when one is used there).
VIEWER_TOKEN_PREFIX = "ftv_"
# Longer than any token this service issues or accepts as the admin's: refused unhashed.
MAX_TOKEN_CHARS = 1024

_Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00]*$")]


class ViewerTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: _Name = Field(
        description="Who holds the token (a person or a screen), to recognise it in the list.",
        examples=["ops-wall-screen"],
    )


class ViewerTokenInfo(BaseModel):
    id: str = Field(description="Names the token in the list and to revoke it.")
    name: str = Field(examples=["ops-wall-screen"])
    created_at: datetime
    revoked: bool = Field(examples=[False])
    revoked_at: datetime | None = None


class ViewerToken(ViewerTokenInfo):
    token: str = Field(
        description="The token to enter on the dashboard's sign-in page; shown only here.",
        examples=["ftv_..."],
    )


@dataclass(frozen=True)
class Viewer:
    """Who looks at the dashboard: the admin, or the holder of one viewer token."""

    is_admin: bool
    token_id: str | None = None


def authenticate_viewer(core: Core, token: str | None) -> Viewer:
    """The admin token or a valid viewer token; `Unauthorized` when missing, unknown or revoked."""
    if not token:
        raise Unauthorized("sign in with the admin token or a viewer token")
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized("unknown token")
    digest = hash_token(token)
    if core.is_admin_token(digest):
        return Viewer(is_admin=True)
    with core.db.read() as conn:
        row = conn.execute(
            select(viewer_tokens.c.id, viewer_tokens.c.revoked_at).where(
                viewer_tokens.c.token_hash == digest
            )
        ).first()
    if row is None:
        raise Unauthorized("unknown token")
    if row.revoked_at is not None:
        raise Unauthorized("this viewer token has been revoked")
    return Viewer(is_admin=False, token_id=row.id)


def _info(row: Row) -> ViewerTokenInfo:
    revoked_at = row.revoked_at
    return ViewerTokenInfo(
        id=row.id,
        name=row.name,
        created_at=datetime.fromtimestamp(row.created_at, UTC),
        revoked=revoked_at is not None,
        revoked_at=None if revoked_at is None else datetime.fromtimestamp(revoked_at, UTC),
    )


def create_viewer_token(
    core: Core, req: ViewerTokenRequest, mint: Mint = fresh_secret, keep: Keep = keep_nothing
) -> ViewerToken:
    token = mint(VIEWER_TOKEN_PREFIX, 32)
    tid = new_id("vwt_")
    t = now()
    with core.db.write() as conn:
        conn.execute(
            insert(viewer_tokens).values(
                id=tid, name=req.name, token_hash=hash_token(token), created_at=t
            )
        )
        issued = ViewerToken(
            id=tid,
            name=req.name,
            created_at=datetime.fromtimestamp(t, UTC),
            revoked=False,
            token=token,
        )
        keep(conn, issued)
    return issued


def list_viewer_tokens(core: Core) -> list[ViewerTokenInfo]:
    """Every viewer token issued, oldest first, without its secret."""
    with core.db.read() as conn:
        rows = conn.execute(
            select(viewer_tokens).order_by(viewer_tokens.c.created_at, viewer_tokens.c.id)
        ).all()
    return [_info(r) for r in rows]


def revoke_viewer_token(core: Core, token_id: str) -> ViewerTokenInfo:
    """Revoke a viewer token (idempotent): the dashboard refuses it from its next request on."""
    with core.db.write() as conn:
        conn.execute(
            update(viewer_tokens)
            .where(viewer_tokens.c.id == token_id, viewer_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now())
        )
        row = conn.execute(select(viewer_tokens).where(viewer_tokens.c.id == token_id)).first()
    if row is None:
        raise NotFound(f"no viewer token {token_id!r}")
    return _info(row)
