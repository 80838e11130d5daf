"""Evaluations: a client reports its accuracy of a global version (the final one above all)."""

from __future__ import annotations

import asyncio

from fastapi import Response

from aggregator_service.api.deps import ClientOfDep, CoreDep, MemberDep
from aggregator_service.api.errors import error_responses
from aggregator_service.api.routes import resource_router
from aggregator_service.services import evaluations
from shared.api import Evaluation, EvaluationReport

router = resource_router("/v1/federations/{fid}/evaluations", "evaluations")


@router.post(
    "",
    status_code=201,
    summary="Report this client's accuracy of a global version",
    description="The client's top-1 accuracy of `version` (a global version of this "
    "federation, usually the final one) on its local validation split. One report per client "
    "and version: the same figures again answer 200 with the stored report, different figures "
    "answer 409.",
    responses={
        200: {"model": Evaluation, "description": "These figures were already reported."},
        **error_responses(404, 409, 422),
    },
)
async def report_evaluation(
    fid: str, body: EvaluationReport, response: Response, core: CoreDep, principal: ClientOfDep
) -> Evaluation:
    assert principal.client_id is not None
    stored, repeat = await asyncio.to_thread(
        evaluations.record_evaluation, core, principal.client_id, fid, body
    )
    if repeat:
        response.status_code = 200
    return stored


@router.get(
    "",
    summary="Evaluations of global versions",
    description="Per client and version, oldest version first; `final` marks the evaluations "
    "of the completed federation's final version. The admin sees every client; a client sees "
    "its own.",
    responses=error_responses(404, 422),
)
def list_evaluations(fid: str, core: CoreDep, member: MemberDep) -> list[Evaluation]:
    return evaluations.list_evaluations(core, fid, member)
