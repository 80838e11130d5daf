"""`create_app(settings)`: the FastAPI app with its own database, blob store and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from aggregator_service.api.errors import RejectNul, install_error_handlers
from aggregator_service.api.limits import BodyGuard
from aggregator_service.api.routes import (
    clients,
    docs,
    evaluations,
    federations,
    health,
    rounds,
    secagg,
    states,
    viewers,
)
from aggregator_service.dashboard import router as dashboard_router
from aggregator_service.metrics import Metrics, resolve_metrics_token
from aggregator_service.services.context import Core, hash_token
from aggregator_service.services.privacy import current_epsilons
from aggregator_service.services.runner import RoundRunner
from aggregator_service.services.secagg.round import current_attempts
from aggregator_service.settings import Settings, resolve_admin_token
from aggregator_service.storage import Database, open_blob_store
from aggregator_service.storage.blobs import private_dir

__all__ = ["build_core", "create_app"]

_DESCRIPTION = (
    "Federated parameter-efficient fine-tuning of CLIP and ViT. Clients long-poll the current "
    "round, download the global trainable state, train locally and upload a safetensors delta; "
    "the service aggregates each round when its quorum has arrived. Authenticate with "
    "`Authorization: Bearer <token>`: the admin token, or a client API key from registration."
)

# One entry per router tag: generated clients group operations by tag (a module per tag).
_TAGS = [
    {
        "name": "federations",
        "description": "Create, list, describe, pause, resume and cancel "
        "federations; issue and revoke enrollment tokens.",
    },
    {
        "name": "clients",
        "description": "Register with an enrollment token; list and revoke "
        "clients; rotate an API key.",
    },
    {
        "name": "rounds",
        "description": "The current round (long-poll), the round history and "
        "one round's record, and uploading a client's delta.",
    },
    {
        "name": "states",
        "description": "Downloads: global trainable states, the frozen base, "
        "and the final model of a completed federation (safetensors).",
    },
    {
        "name": "evaluations",
        "description": "Clients' accuracy of global versions, the final one above all.",
    },
    {
        "name": "viewers",
        "description": "Viewer tokens (admin): read-only access to the dashboard, never to the API.",
    },
    {
        "name": "secure-aggregation",
        "description": "SecAgg+ rounds: advertise keys, share keys, masked input, unmasking; "
        "the service learns only the sum of the clients' deltas.",
    },
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
]


def _operation_id(route: APIRoute) -> str:
    """A route's operationId is its function's name (`create_federation`, `upload_update`):
    short, stable, and what generated clients name their methods after."""
    return route.name


def build_core(settings: Settings) -> Core:
    """Open (creating when missing) the data directory, database schema and blob store."""
    private_dir(settings.data_dir)
    db = Database(settings.sqlalchemy_url())
    db.create_schema()
    core = Core(
        settings=settings,
        db=db,
        blobs=open_blob_store(settings.data_dir, settings.blob_url),
        metrics=Metrics(token=resolve_metrics_token(settings)),
        admin_token_hash=hash_token(resolve_admin_token(settings)),
    )
    core.metrics.epsilons.source = lambda: current_epsilons(core)  # read at each scrape
    core.metrics.secure_attempts.source = lambda: current_attempts(core)
    return core


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    core = build_core(settings)
    runner = RoundRunner(core)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runner.start()
        try:
            yield
        finally:
            await runner.stop()
            core.db.dispose()

    app = FastAPI(
        title="FedTune aggregator",
        version="1.0.0",
        description=_DESCRIPTION,
        openapi_tags=_TAGS,
        generate_unique_id_function=_operation_id,
        lifespan=lifespan,
        separate_input_output_schemas=False,
        openapi_url="/openapi.json" if settings.docs else None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.core = core
    app.state.runner = runner
    install_error_handlers(app)
    app.add_middleware(
        BodyGuard,
        core=core,
        max_json_bytes=settings.max_json_bytes,
        max_header_bytes=settings.max_header_bytes,
    )
    app.add_middleware(RejectNul)
    for module in (federations, clients, rounds, secagg, evaluations, states, viewers, health):
        app.include_router(module.router)
    app.include_router(dashboard_router)
    if app.openapi_url is not None:
        docs.install_docs(app, app.openapi_url)
    return app
