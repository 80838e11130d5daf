"""Liveness, readiness and Prometheus metrics (no auth)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from aggregator_service.api.deps import CoreDep
from aggregator_service.services.context import Core
from shared.api import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


def _readiness(core: Core) -> Health:
    detail: dict[str, object] = {}
    try:
        core.db.ping()
        detail["database"] = "ok"
    except Exception as exc:
        detail["database"] = f"unreachable: {type(exc).__name__}"
    detail["blobs"] = "ok" if core.blobs.writable() else "not writable"
    ok = all(v == "ok" for v in detail.values())
    return Health(status="ok" if ok else "unavailable", detail=detail)


@router.get(
    "/readyz",
    summary="Readiness: database reachable and blob store writable",
    response_model=Health,
    responses={503: {"model": Health, "description": "Not ready."}},
)
async def readyz(core: CoreDep) -> Response:
    health = await run_in_threadpool(_readiness, core)
    return JSONResponse(health.model_dump(), status_code=200 if health.status == "ok" else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
def metrics(core: CoreDep) -> Response:
    return Response(core.metrics.render(), media_type=CONTENT_TYPE_LATEST)
