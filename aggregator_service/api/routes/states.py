"""Global trainable states, the frozen base and the final model, streamed from the blob store
with ETags.

With an S3 store and `presign_downloads` on, the answer is a 307 to a short-lived
presigned URL of the object instead; the ETag still names the sha256, which the
client checks on what the store sends.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Query, Response
from fastapi.responses import FileResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from aggregator_service.api.deps import CoreDep, MemberDep
from aggregator_service.api.errors import error_responses
from aggregator_service.api.routes import resource_router
from aggregator_service.services.context import Core
from aggregator_service.services.history import (
    StateRef,
    base_ref,
    count_bytes_out,
    final_model_ref,
    resolve_state,
)

router = resource_router("/v1/federations/{fid}", "states")

_SAFETENSORS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A safetensors file.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    304: {"description": "Not modified: If-None-Match names this blob."},
    307: {
        "description": "Fetch the blob from the blob store at `Location` (a presigned URL, "
        "without this API's Authorization header); its sha256 must equal the ETag."
    },
}


def _matches(if_none_match: str | None, digest: str) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/").strip('"') for t in if_none_match.split(",")}
    return digest in tags or "*" in tags


async def _serve(
    core: Core, fid: str, ref: StateRef, if_none_match: str | None, headers: dict[str, str]
) -> Response:
    headers = {"ETag": f'"{ref.digest}"', **headers}
    if _matches(if_none_match, ref.digest):
        return Response(status_code=304, headers=headers)
    url = None
    if core.settings.presign_downloads:
        url = await run_in_threadpool(core.blobs.redirect_url, ref.digest)
    if url is not None:
        size = await run_in_threadpool(core.blobs.size, ref.digest)
        await run_in_threadpool(count_bytes_out, core, fid, size)
        return RedirectResponse(url, 307, headers={**headers, "Cache-Control": "no-store"})
    path = await run_in_threadpool(core.blobs.path, ref.digest)  # may fill a cache
    size = path.stat().st_size
    await run_in_threadpool(count_bytes_out, core, fid, size)
    return FileResponse(path, media_type="application/octet-stream", headers=headers)


IfNoneMatch = Annotated[str | None, Header(description="ETag(s) the caller already holds.")]


@router.get(
    "/state",
    summary="Download a global trainable state",
    description="The newest state by default; `version` selects a past one by sha256 or by round "
    "number (0 = initial). `ETag` is the sha256; `X-FedTune-Round` the round after which it "
    "holds.",
    response_class=Response,
    responses={**_SAFETENSORS, **error_responses(404, 422)},
)
async def download_state(
    fid: str,
    core: CoreDep,
    _member: MemberDep,
    version: Annotated[
        str | None, Query(description="sha256 hex digest, or a round number (0 = initial).")
    ] = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    ref = await run_in_threadpool(resolve_state, core, fid, version)
    return await _serve(core, fid, ref, if_none_match, {"X-FedTune-Round": str(ref.round)})


@router.get(
    "/base",
    summary="Download the frozen base",
    description="Served when the spec's `model.base_source` is `server`; 404 otherwise. "
    "`X-FedTune-Base-Fingerprint` is the sha256 over the frozen tensors.",
    response_class=Response,
    responses={**_SAFETENSORS, **error_responses(404, 422)},
)
async def download_base(
    fid: str, core: CoreDep, _member: MemberDep, if_none_match: IfNoneMatch = None
) -> Response:
    ref = await run_in_threadpool(base_ref, core, fid)
    return await _serve(
        core, fid, ref, if_none_match, {"X-FedTune-Base-Fingerprint": ref.fingerprint}
    )


@router.get(
    "/model",
    summary="Download the final model",
    description="The final global trainable state of a completed federation (the same bytes "
    "as `/state` of its last version); 409 `not_completed` before. `ETag` is the sha256; "
    "`X-FedTune-Round` the last round.",
    response_class=Response,
    responses={**_SAFETENSORS, **error_responses(404, 409, 422)},
)
async def download_model(
    fid: str, core: CoreDep, _member: MemberDep, if_none_match: IfNoneMatch = None
) -> Response:
    ref = await run_in_threadpool(final_model_ref, core, fid)
    return await _serve(core, fid, ref, if_none_match, {"X-FedTune-Round": str(ref.round)})
