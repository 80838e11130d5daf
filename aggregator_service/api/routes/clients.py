"""Clients: register with an enrollment token; list and revoke (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from aggregator_service.api.deps import AdminDep, CoreDep, IdempotentDep
from aggregator_service.api.errors import error_responses
from aggregator_service.services import access
from shared.api import ClientInfo, ClientRegistered, ClientRegistration

router = APIRouter(prefix="/v1/clients", tags=["clients"])


@router.post(
    "",
    status_code=201,
    summary="Register a client",
    description="Spends one use of an enrollment token. The API key is returned only here "
    "(and to a retry with the same `Idempotency-Key`).",
    response_model=ClientRegistered,
    responses=error_responses(401, 403, 409, 422),
)
async def register(reg: ClientRegistration, core: CoreDep, once: IdempotentDep) -> Response:
    return await once.run(
        lambda mint: access.register_client(core, reg, mint),
        reg,
        credential=reg.enrollment_token,
    )


@router.get(
    "",
    summary="List clients",
    response_model=list[ClientInfo],
    responses=error_responses(401, 403, 422),
)
def list_all(
    core: CoreDep,
    _admin: AdminDep,
    federation_id: Annotated[str | None, Query(description="Only this federation's.")] = None,
) -> list[ClientInfo]:
    return access.list_clients(core, federation_id)


@router.delete(
    "/{cid}",
    summary="Revoke a client",
    description="Its API key stops working at once; its accepted updates stay.",
    response_model=ClientInfo,
    responses=error_responses(401, 403, 404, 422),
)
def revoke(cid: str, core: CoreDep, _admin: AdminDep) -> ClientInfo:
    return access.revoke_client(core, cid)
