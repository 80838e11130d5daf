"""Liveness and readiness (no auth), and Prometheus metrics (the metrics or admin token)."""

from __future__ import annotations

import shutil

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security.utils import get_authorization_scheme_param
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from aggregator_service.api.deps import CoreDep
from aggregator_service.api.errors import error_responses
from aggregator_service.services.access import authenticate
from aggregator_service.services.context import Core
from aggregator_service.services.errors import Forbidden, Unauthorized
from aggregator_service.services.uploads import largest_update_bytes
from shared.api import Health

router = APIRouter(tags=["health"])

# Below this the data directory's disk is not ready whatever the federations need (the
# database's own writes need room too).
_MIN_FREE_BYTES = 16 << 20


@router.get("/healthz", summary="Liveness", response_model=Health)
def check_liveness() -> Health:
    return Health(status="ok")


def _readiness(core: Core) -> Health:
    detail: dict[str, object] = {}
    try:
        core.db.ping()
        detail["database"] = "ok"
        need = 2 * largest_update_bytes(core)  # one spooled upload and the state it feeds
    except Exception as exc:
        detail["database"] = f"unreachable: {type(exc).__name__}"
        need = 0
    detail["blobs"] = "ok" if core.blobs.writable() else "not writable"
    free = shutil.disk_usage(core.settings.data_dir).free
    detail["disk"] = (
        "ok"
        if free >= max(need, _MIN_FREE_BYTES)
        else f"low: {free >> 20} MiB free, {max(need, _MIN_FREE_BYTES) >> 20} MiB needed"
    )
    ok = all(v == "ok" for v in detail.values())
    return Health(status="ok" if ok else "unavailable", detail=detail)


@router.get(
    "/readyz",
    summary="Readiness: database reachable, blob store writable, room on the disk",
    response_model=Health,
    responses={503: {"model": Health, "description": "Not ready."}},
)
async def check_readiness(core: CoreDep) -> Response:
    health = await run_in_threadpool(_readiness, core)
    return JSONResponse(health.model_dump(), status_code=200 if health.status == "ok" else 503)


_METRICS_AUTH = "/metrics needs Authorization: Bearer <the metrics token or the admin token>"


def _authorize_metrics(core: Core, request: Request) -> None:
    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    token = token if scheme.lower() == "bearer" else ""
    if token and core.metrics.is_metrics_token(token):
        return
    try:
        principal = authenticate(core, token or None)
    except Unauthorized:
        raise Unauthorized(_METRICS_AUTH) from None
    if not principal.is_admin:
        raise Forbidden(_METRICS_AUTH + "; a client API key is not enough")


@router.get(
    "/metrics",
    summary="Prometheus metrics (the metrics token or the admin token)",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
        **error_responses(401, 403),
    },
    openapi_extra={"security": [{"HTTPBearer": []}]},
)
def get_metrics(core: CoreDep, request: Request) -> Response:
    _authorize_metrics(core, request)
    return Response(core.metrics.render(), media_type=CONTENT_TYPE_LATEST)
