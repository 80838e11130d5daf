"""Named dependencies: the app's Core and RoundRunner, who the caller is, idempotent POSTs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from aggregator_service.api.idempotency import IdempotencyKey, Idempotent
from aggregator_service.api.limits import PRINCIPAL
from aggregator_service.services.access import Principal, authenticate
from aggregator_service.services.context import Core
from aggregator_service.services.runner import RoundRunner

__all__ = [
    "AdminDep",
    "ClientOfDep",
    "CoreDep",
    "IdempotentDep",
    "MemberDep",
    "PrincipalDep",
    "RunnerDep",
]

_bearer = HTTPBearer(
    auto_error=False,
    description="Admin token, or a client's API key (ftk_…) issued at registration.",
)


def get_core(request: Request) -> Core:
    core: Core = request.app.state.core
    return core


def get_runner(request: Request) -> RoundRunner:
    runner: RoundRunner = request.app.state.runner
    return runner


CoreDep = Annotated[Core, Depends(get_core)]
RunnerDep = Annotated[RoundRunner, Depends(get_runner)]


def get_principal(
    request: Request,
    core: CoreDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller: as the body guard found it before reading a body, else authenticated now."""
    checked: Principal | None = getattr(request.state, PRINCIPAL, None)
    if checked is not None:
        return checked
    return authenticate(core, creds.credentials if creds else None)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: PrincipalDep) -> Principal:
    principal.require_admin()
    return principal


def require_member(fid: str, principal: PrincipalDep) -> Principal:
    """A client of federation `fid`, or the admin."""
    principal.require_member(fid)
    return principal


def require_client_of(fid: str, principal: PrincipalDep) -> Principal:
    """A client of federation `fid` (not the admin: only clients submit updates)."""
    principal.require_member(fid, allow_admin=False)
    return principal


def get_idempotent(request: Request, core: CoreDep, key: IdempotencyKey = None) -> Idempotent:
    """The bearer token is read from the header, not through `_bearer`, so that registration
    (which takes none) is not documented as needing one."""
    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    return Idempotent(core, request, key, token if scheme.lower() == "bearer" and token else None)


AdminDep = Annotated[Principal, Depends(require_admin)]
MemberDep = Annotated[Principal, Depends(require_member)]
ClientOfDep = Annotated[Principal, Depends(require_client_of)]
IdempotentDep = Annotated[Idempotent, Depends(get_idempotent)]
