"""Rounds: the current round (long-poll), history, one round's record, and uploading a
client's delta."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import Path, Query, Request, Response

from aggregator_service.api.deps import ClientOfDep, CoreDep, MemberDep, RunnerDep
from aggregator_service.api.errors import error_responses
from aggregator_service.api.routes import resource_router
from aggregator_service.api.uploads import receive_upload
from aggregator_service.services import history
from aggregator_service.services.errors import DomainError
from aggregator_service.services.uploads import expected_upload, ingest
from shared.api import RoundRecord, RoundStatus, UpdateReceipt

router = resource_router("/v1/federations/{fid}/rounds", "rounds")

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "The delta (local minus global trainable state) as a safetensors file: "
        "keys and shapes of the manifest, dtype = spec.transport.dtype, and `__metadata__` "
        "format=fedtune-delta/1, federation, round, base_version, num_examples, metrics (JSON).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.get(
    "/current",
    summary="The current round (long-poll)",
    description="With `wait_s` > 0 the answer is held until the round's `revision` differs from "
    "the one passed (or from the current one), or with `after_round` until a later round "
    "opens or the federation completes, or until `wait_s` passes. One API key may hold "
    "`max_polls_per_client` such waits at once per server process (429 past it).",
    responses=error_responses(404, 422, 429, 503),
)
async def get_current_round(
    fid: str,
    request: Request,
    principal: MemberDep,
    runner: RunnerDep,
    wait_s: Annotated[float, Query(ge=0, le=60, description="Seconds to hold for a change.")] = 0,
    revision: Annotated[
        int | None, Query(description="Revision the caller already has; answer at once if stale.")
    ] = None,
    after_round: Annotated[
        int | None,
        Query(
            ge=0,
            description="Hold only until a round later than this one opens or the federation "
            "completes (other members' uploads do not end the wait).",
        ),
    ] = None,
) -> RoundStatus:
    await runner.core.spec_async(fid)
    with runner.polls.hold(principal.client_id if wait_s > 0 else None):
        return await runner.wait_for_change(
            fid, principal.client_id, wait_s, revision, lambda: _gone(request), after_round
        )


async def _gone(request: Request) -> None:
    """Return once the caller has disconnected (a GET's body, if any, is read and dropped, up to
    the JSON body limit: past it the caller is treated as gone)."""
    read = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        read += len(message.get("body", b""))
        if read > request.app.state.core.settings.max_json_bytes:
            return


@router.get(
    "",
    summary="Round history",
    description="Participants, bytes in and out, example-weighted metrics and timings per round. "
    "A client sees the aggregates and its own participation; the admin sees every participant.",
    responses=error_responses(404, 422),
)
def list_rounds(fid: str, core: CoreDep, member: MemberDep) -> list[RoundRecord]:
    return history.list_rounds(core, fid, member)


RoundNumber = Annotated[int, Path(ge=1, description="Round number (1-based).")]


@router.get(
    "/{r}",
    summary="One round's record",
    description="The record of round r as in the history: a client sees the aggregates and its "
    "own participation, the admin every participant. 404 for a round that has not opened.",
    responses=error_responses(404, 422),
)
def get_round(fid: str, r: RoundNumber, core: CoreDep, member: MemberDep) -> RoundRecord:
    return history.get_round(core, fid, r, member)


@router.put(
    "/{r}/update",
    status_code=201,
    summary="Upload this client's delta for round r",
    description="Accepted updates are durable before the answer. The same bytes again answer "
    "200 with `duplicate: true` (even after the round closed); different bytes answer 409. "
    "The safetensors header is checked against the manifest as soon as it arrives, and the "
    "body may be no longer than that header declares. One API key may send "
    "`max_uploads_per_client` uploads at once per server process (429 past it).",
    responses={
        200: {"model": UpdateReceipt, "description": "These exact bytes were already accepted."},
        **error_responses(400, 404, 408, 409, 413, 422, 429, 503, 507),
    },
    openapi_extra=_UPLOAD_BODY,
)
async def upload_update(
    fid: str,
    r: RoundNumber,
    request: Request,
    response: Response,
    principal: ClientOfDep,
    runner: RunnerDep,
) -> UpdateReceipt:
    core = runner.core
    await core.spec_async(fid)
    assert principal.client_id is not None
    try:
        receipt = await receive_upload(
            runner,
            request,
            principal.client_id,
            partial(expected_upload, core, fid, r),
            partial(ingest, core, principal.client_id, fid, r),
        )
    except DomainError as exc:
        core.metrics.updates_refused.labels(exc.error).inc()
        raise
    if receipt.duplicate:
        response.status_code = 200
    if receipt.round_status == "aggregating":  # this update (or an earlier one) met the quorum
        runner.spawn(fid, r)
    return receipt
