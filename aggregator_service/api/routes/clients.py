"""Clients: register with an enrollment token; list and revoke (admin); rotate a key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Response
from pydantic import BaseModel

from aggregator_service.api.deps import AdminDep, CoreDep, IdempotentDep, PrincipalDep
from aggregator_service.api.errors import error_responses
from aggregator_service.api.routes import resource_router
from aggregator_service.services import access
from shared.api import ClientInfo, ClientKeyRotated, ClientRegistered, ClientRegistration

router = resource_router("/v1/clients", "clients")


@router.post(
    "",
    status_code=201,
    summary="Register a client",
    description="Spends one use of an enrollment token. The API key is returned only here "
    "(and to a retry with the same `Idempotency-Key`).",
    response_model=ClientRegistered,
    responses=error_responses(409, 422),
)
async def register_client(reg: ClientRegistration, core: CoreDep, once: IdempotentDep) -> Response:
    return await once.run(
        lambda mint, keep: access.register_client(core, reg, mint, keep),
        reg,
        credential=reg.enrollment_token,
    )


@router.get(
    "",
    summary="List clients",
    responses=error_responses(422),
)
def list_clients(
    core: CoreDep,
    _admin: AdminDep,
    federation_id: Annotated[str | None, Query(description="Only this federation's.")] = None,
) -> list[ClientInfo]:
    return access.list_clients(core, federation_id)


@router.delete(
    "/{cid}",
    summary="Revoke a client",
    description="Its API key stops working at once; its accepted updates stay.",
    responses=error_responses(404, 422),
)
def revoke_client(cid: str, core: CoreDep, _admin: AdminDep) -> ClientInfo:
    return access.revoke_client(core, cid)


class _KeyRotation(BaseModel):
    """What a rotation's Idempotency-Key is bound to (the request has no body)."""

    client_id: str


@router.post(
    "/{cid}/key",
    status_code=200,
    summary="Rotate a client's API key",
    description="Returns a new API key for the client, called by that client or the admin. "
    "After the admin's rotation the old key stops working at once. After a client's own, the "
    "key it called with keeps working until the new key is first used (or "
    f"{access.PREVIOUS_KEY_GRACE_S / 3600:g} hours at most), so send an `Idempotency-Key` and, "
    "when the answer is lost, retry with the old key and the same Idempotency-Key: the same "
    "new key comes back.",
    response_model=ClientKeyRotated,
    responses=error_responses(404, 409, 422),
)
async def rotate_client_key(
    cid: str, core: CoreDep, principal: PrincipalDep, once: IdempotentDep
) -> Response:
    return await once.run(
        lambda mint, keep: access.rotate_key(core, principal, cid, mint, keep),
        _KeyRotation(client_id=cid),
    )
