"""Secure aggregation (SecAgg+): the four steps of a secure round, each its own operation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request, Response

from aggregator_service.api.deps import ClientOfDep, MemberDep, RunnerDep
from aggregator_service.api.errors import error_responses
from aggregator_service.api.routes import resource_router
from aggregator_service.api.routes.rounds import RoundNumber
from aggregator_service.api.uploads import receive_upload
from aggregator_service.services.context import Core
from aggregator_service.services.runner import RoundRunner
from aggregator_service.services.secagg import steps
from aggregator_service.services.secagg.inputs import expected_masked, ingest_masked
from aggregator_service.services.secagg.round import state
from shared.api import (
    SecaggComplaint,
    SecaggIncomingShare,
    SecaggKeys,
    SecaggReceipt,
    SecaggShares,
    SecaggState,
    SecaggUnmask,
)
from shared.secagg.protocol import MASKED_FORMAT

Body = TypeVar("Body", SecaggKeys, SecaggShares, SecaggComplaint, SecaggUnmask)

router = resource_router(
    "/v1/federations/{fid}/rounds/{r}/secure-aggregation", "secure-aggregation"
)

Attempt = Annotated[int, Query(ge=1, description="The protocol attempt of the round.")]
_STEP = {
    200: {"model": SecaggReceipt, "description": "This exact body was already accepted."},
    **error_responses(404, 409, 422, 503),
}


@dataclass(frozen=True)
class _Step:
    """A client's call to one step of round `r`'s protocol, and how it is answered."""

    fid: str
    r: int
    client_id: str
    response: Response
    runner: RoundRunner

    async def take(
        self, call: Callable[[Core, str, int, str, Body], SecaggReceipt], body: Body
    ) -> SecaggReceipt:
        """One JSON protocol step, taken off the event loop."""
        core = self.runner.core
        receipt = await asyncio.to_thread(call, core, self.fid, self.r, self.client_id, body)
        return self.answer(receipt)

    def answer(self, receipt: SecaggReceipt) -> SecaggReceipt:
        """200 for a repeat; when this step finished the protocol, aggregate now."""
        if receipt.duplicate:
            self.response.status_code = 200
        elif receipt.phase == "done":
            self.runner.spawn(self.fid, self.r)
        return receipt


def _client_step(
    fid: str, r: RoundNumber, response: Response, principal: ClientOfDep, runner: RunnerDep
) -> _Step:
    assert principal.client_id is not None
    return _Step(fid, r, principal.client_id, response, runner)


StepDep = Annotated[_Step, Depends(_client_step)]


@router.get(
    "",
    summary="A secure round's phase, the caller's neighbours and their keys",
    description="Phase, attempt and its deadline; from phase `share` the caller's neighbours "
    "with their public keys and its threshold; who shared keys (from `input`) and whose "
    "masked input counts (from `unmask`); the caller's steps already taken; what went wrong.",
    responses=error_responses(404, 409, 422),
)
async def get_secure_aggregation(
    fid: str, r: RoundNumber, member: MemberDep, runner: RunnerDep
) -> SecaggState:
    await runner.core.spec_async(fid)
    return await asyncio.to_thread(state, runner.core, fid, r, member.client_id)


@router.post(
    "/keys",
    status_code=201,
    summary="Step 0: advertise this client's two public keys",
    description="Two X25519 public keys for this attempt. The cohort is fixed once `quorum` "
    "clients have advertised, or at the phase's deadline with `min_updates`.",
    responses=_STEP,
)
async def advertise_keys(body: SecaggKeys, step: StepDep) -> SecaggReceipt:
    return await step.take(steps.advertise, body)


@router.post(
    "/shares",
    status_code=201,
    summary="Step 1: the encrypted Shamir shares for this client's neighbours",
    description="One AES-GCM ciphertext per neighbour (exactly), holding the neighbour's "
    "shares of this client's self-mask seed and mask key; the service routes them unread.",
    responses=_STEP,
)
async def share_keys(body: SecaggShares, step: StepDep) -> SecaggReceipt:
    return await step.take(steps.send_shares, body)


@router.get(
    "/shares",
    summary="The shares this client's neighbours sent it",
    description="From phase `input`: the ciphertexts addressed to the caller by neighbours "
    "that shared keys.",
    responses=error_responses(404, 409, 422),
)
async def get_shares(
    fid: str, r: RoundNumber, attempt: Attempt, principal: ClientOfDep, runner: RunnerDep
) -> list[SecaggIncomingShare]:
    assert principal.client_id is not None
    return await asyncio.to_thread(
        steps.incoming_shares, runner.core, fid, r, principal.client_id, attempt
    )


@router.post(
    "/complaints",
    status_code=201,
    summary="Name the sender of a share that failed authentication",
    description="The sender is left out of the round (its masks are removed as a dropped "
    "client's) and the round's events and history name it.",
    responses=_STEP,
)
async def report_bad_share(body: SecaggComplaint, step: StepDep) -> SecaggReceipt:
    return await step.take(steps.complain, body)


_MASKED_BODY = {
    "requestBody": {
        "required": True,
        "description": "The masked input as a safetensors file: the manifest's keys and shapes, "
        "words mod 2^modulus_bits (int32 when modulus_bits is 32, else int64 in "
        "0..2^modulus_bits-1), `__metadata__` format="
        f"{MASKED_FORMAT}, federation, round, attempt, num_examples, metrics (JSON).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.put(
    "/masked-input",
    status_code=201,
    summary="Step 2: this client's masked input",
    description="encode(weight x clipped delta) + PRG(b) + the pairwise masks, mod "
    "2^modulus_bits. Streamed to disk; the header is checked as it arrives and the body may "
    "be no longer than it declares. The same bytes again answer 200.",
    responses={**_STEP, **error_responses(400, 408, 413, 429, 507)},
    openapi_extra=_MASKED_BODY,
)
async def upload_masked_input(attempt: Attempt, request: Request, step: StepDep) -> SecaggReceipt:
    core = step.runner.core
    await core.spec_async(step.fid)
    receipt = await receive_upload(
        step.runner,
        request,
        step.client_id,
        partial(expected_masked, core, step.fid, step.r, attempt),
        partial(ingest_masked, core, step.client_id, step.fid, step.r, attempt),
    )
    return step.answer(receipt)


@router.post(
    "/unmask",
    status_code=201,
    summary="Step 3: the shares that remove the masks",
    description="For each neighbour that shared keys: its share of b when it sent a masked "
    "input, of s_sk when it did not, never both. Once the survivors have answered (or at the "
    "deadline) the service rebuilds the secrets and aggregates the unmasked sum.",
    responses=_STEP,
)
async def send_unmask_shares(body: SecaggUnmask, step: StepDep) -> SecaggReceipt:
    return await step.take(steps.send_unmask, body)
