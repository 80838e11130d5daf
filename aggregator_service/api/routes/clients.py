"""Clients: register with an enrollment token; list and revoke (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from aggregator_service.api.deps import AdminDep, CoreDep
from aggregator_service.api.errors import error_responses
from aggregator_service.services import access
from shared.api import ClientInfo, ClientRegistered, ClientRegistration

router = APIRouter(prefix="/v1/clients", tags=["clients"])


@router.post(
    "",
    status_code=201,
    summary="Register a client",
    description="Spends one use of an enrollment token. The API key is returned only here.",
    response_model=ClientRegistered,
    responses=error_responses(401, 403, 422),
)
def register(reg: ClientRegistration, core: CoreDep) -> ClientRegistered:
    return access.register_client(core, reg)


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
