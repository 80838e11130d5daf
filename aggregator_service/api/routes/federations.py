"""Federations: create, list, pause, resume, cancel (admin), describe (members); issue, list,
revoke enrollment tokens (admin)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import Path, Request, Response

from aggregator_service.api.deps import AdminDep, CoreDep, IdempotentDep, MemberDep
from aggregator_service.api.errors import error_responses
from aggregator_service.api.routes import resource_router
from aggregator_service.services import access, federations, lifecycle
from aggregator_service.services.errors import Invalid, Malformed
from shared.api import (
    EnrollmentToken,
    EnrollmentTokenInfo,
    EnrollmentTokenRequest,
    FederationInfo,
    FederationSummary,
)
from shared.spec import SpecError, parse_spec

router = resource_router("/v1/federations", "federations")

_SPEC_EXAMPLE = {
    "name": "cifar10-clip-bias",
    "model": {"family": "open_clip", "arch": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
    "task": {"classes": ["airplane", "automobile", "bird"]},
    "method": {"name": "bias"},
    "rounds": {"total": 50, "quorum": 3, "min_updates": 2, "deadline_s": 3600},
}


@router.post(
    "",
    status_code=201,
    summary="Create a federation from a spec",
    description="Builds the model, stores the initial trainable state (and the frozen base when "
    "`model.base_source` is `server`) and opens round 1.",
    response_model=FederationInfo,
    responses=error_responses(400, 409, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/FederationSpec"},
                    "example": _SPEC_EXAMPLE,
                }
            },
        }
    },
)
async def create_federation(
    request: Request, core: CoreDep, _admin: AdminDep, once: IdempotentDep
) -> Response:
    try:
        data = json.loads(await request.body())
    except RecursionError:
        raise Malformed(
            "request body nests too deeply to be read as JSON; send a JSON federation spec",
            error="invalid_spec",
        ) from None
    except ValueError:  # not JSON, not UTF-8, or an integer past Python's digit limit
        raise Invalid("request body must be a JSON federation spec", error="invalid_spec") from None
    try:
        spec = parse_spec(data)
    except SpecError as exc:
        raise Invalid(str(exc), error="invalid_spec") from None
    return await once.run(lambda _mint, keep: federations.create_federation(core, spec, keep), spec)


@router.get(
    "",
    summary="List federations",
    description="Every federation, oldest first: id, name, status, current round, creation time.",
)
def list_federations(core: CoreDep, _admin: AdminDep) -> list[FederationSummary]:
    return federations.list_federations(core)


@router.get(
    "/{fid}",
    summary="Describe a federation",
    description="Spec, status, manifest of trainable tensors and the base fingerprint.",
    responses=error_responses(404, 422),
)
def get_federation(fid: str, core: CoreDep, _member: MemberDep) -> FederationInfo:
    return federations.federation_info(core, fid)


@router.post(
    "/{fid}/pause",
    summary="Pause a federation",
    description="While paused, uploads and secure-aggregation steps are refused (409 "
    "`federation_paused`, nothing stored) and no round or secure phase ends by its deadline; "
    "a round already aggregating still finishes. "
    "Clients wait. Pausing a paused federation changes nothing; a completed or cancelled one "
    "answers 409.",
    responses=error_responses(404, 409, 422),
)
def pause_federation(fid: str, core: CoreDep, _admin: AdminDep) -> FederationInfo:
    return lifecycle.pause_federation(core, fid)


@router.post(
    "/{fid}/resume",
    summary="Resume a paused federation",
    description="Uploads are accepted again and the open round's deadline restarts: the "
    "spec's whole `deadline_s` from now (a secure round's phase: its whole time). Resuming a "
    "running federation changes nothing; a completed or cancelled one answers 409.",
    responses=error_responses(404, 409, 422),
)
def resume_federation(fid: str, core: CoreDep, _admin: AdminDep) -> FederationInfo:
    return lifecycle.resume_federation(core, fid)


@router.post(
    "/{fid}/cancel",
    summary="Cancel a federation",
    description="Final: uploads are refused (409 `federation_cancelled`), no further round "
    "opens, and clients stop. Its history and global states stay readable. Cancelling a "
    "cancelled federation changes nothing; a completed one answers 409.",
    responses=error_responses(404, 409, 422),
)
def cancel_federation(fid: str, core: CoreDep, _admin: AdminDep) -> FederationInfo:
    return lifecycle.cancel_federation(core, fid)


@router.post(
    "/{fid}/enrollment-tokens",
    status_code=201,
    summary="Issue an enrollment token",
    description="A token lets organisations register as clients of this federation; "
    "it is shown once. Its `id` names it in the list and to revoke it.",
    response_model=EnrollmentToken,
    responses=error_responses(404, 409, 422),
)
async def create_enrollment_token(
    fid: str, req: EnrollmentTokenRequest, core: CoreDep, _admin: AdminDep, once: IdempotentDep
) -> Response:
    return await once.run(
        lambda mint, keep: access.create_enrollment_token(core, fid, req, mint, keep), req
    )


TokenId = Annotated[
    str,
    Path(
        pattern=r"^[0-9a-f]{16}$",
        description="The token's id from its issue or the list (not the token).",
    ),
]


@router.get(
    "/{fid}/enrollment-tokens",
    summary="List enrollment tokens",
    description="Every token issued for this federation, oldest first: id, uses left, expiry, "
    "revocation. The tokens themselves are not stored and never shown again.",
    responses=error_responses(404, 422),
)
def list_enrollment_tokens(fid: str, core: CoreDep, _admin: AdminDep) -> list[EnrollmentTokenInfo]:
    return access.list_enrollment_tokens(core, fid)


@router.delete(
    "/{fid}/enrollment-tokens/{token_id}",
    summary="Revoke an enrollment token",
    description="Registration with it is refused from now on (403 `enrollment_invalid`); "
    "clients that already registered with it stay. Revoking again changes nothing.",
    responses=error_responses(404, 422),
)
def revoke_enrollment_token(
    fid: str, token_id: TokenId, core: CoreDep, _admin: AdminDep
) -> EnrollmentTokenInfo:
    return access.revoke_enrollment_token(core, fid, token_id)
