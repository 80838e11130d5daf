"""Viewer tokens (admin): read-only access to the dashboard, never to the API."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Response

from aggregator_service.api.deps import AdminDep, CoreDep, IdempotentDep
from aggregator_service.api.errors import error_responses
from aggregator_service.api.routes import resource_router
from aggregator_service.services import viewers
from aggregator_service.services.viewers import ViewerToken, ViewerTokenInfo, ViewerTokenRequest

router = resource_router("/v1/viewer-tokens", "viewers")

ViewerTokenId = Annotated[
    str,
    Path(
        max_length=32,
        description="The token's id from its issue or the list (not the token).",
    ),
]


@router.post(
    "",
    status_code=201,
    summary="Issue a viewer token",
    description="A token that opens the dashboard (`/dashboard`) read-only, and no API route. "
    "It is shown once; only its hash is stored. Its `id` names it in the list and to revoke it.",
    response_model=ViewerToken,
    responses=error_responses(409, 422),
)
async def create_viewer_token(
    req: ViewerTokenRequest, core: CoreDep, _admin: AdminDep, once: IdempotentDep
) -> Response:
    return await once.run(
        lambda mint, keep: viewers.create_viewer_token(core, req, mint, keep), req
    )


@router.get(
    "",
    summary="List viewer tokens",
    description="Every viewer token issued, oldest first: id, name, revocation. The tokens "
    "themselves are not stored and never shown again.",
)
def list_viewer_tokens(core: CoreDep, _admin: AdminDep) -> list[ViewerTokenInfo]:
    return viewers.list_viewer_tokens(core)


@router.delete(
    "/{token_id}",
    summary="Revoke a viewer token",
    description="The dashboard refuses it from its next request on (a signed-in page goes "
    "back to the sign-in page). Revoking again changes nothing.",
    responses=error_responses(404, 422),
)
def revoke_viewer_token(
    token_id: ViewerTokenId, core: CoreDep, _admin: AdminDep
) -> ViewerTokenInfo:
    return viewers.revoke_viewer_token(core, token_id)
