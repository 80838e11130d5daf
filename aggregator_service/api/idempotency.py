"""`Idempotency-Key` on the POST routes: a retry of a request gets its first answer again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Header, Request, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from aggregator_service.services.context import Core, Mint, fresh_secret
from aggregator_service.services.idempotency import KEEP_S, Attempt, Keep, keep_nothing, run_once

__all__ = ["REPLAYED_HEADER", "IdempotencyKey", "Idempotent"]

REPLAYED_HEADER = "Idempotent-Replayed"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="A unique string per logical request (e.g. a UUID), the same on each retry "
        f"of it. A retry within {KEEP_S / 3600:g} hours gets the first answer again (with "
        f"`{REPLAYED_HEADER}: true`) and changes nothing; the same key with a different body "
        "answers 409. Scoped to the caller's credential and the route.",
    ),
]


class Idempotent:
    """Runs a POST's service call once per Idempotency-Key, or every time without one."""

    def __init__(self, core: Core, request: Request, key: str | None, bearer: str | None) -> None:
        self._core = core
        self._request = request
        self._key = key
        self._bearer = bearer

    async def run(
        self,
        call: Callable[[Mint, Keep], BaseModel],
        payload: BaseModel,
        credential: str | None = None,
    ) -> Response:
        """`call`'s result with the route's status. `call` keeps its answer in the transaction
        of its effect (services/idempotency.py). `payload` is the parsed request body;
        `credential` the caller's secret where it is not the bearer token (registration)."""
        status: int = self._request.scope["route"].status_code
        if self._key is None:
            result = await run_in_threadpool(call, fresh_secret, keep_nothing)
            return _json(status, result.model_dump_json())
        caller = credential if credential is not None else self._bearer
        if caller is None:
            raise RuntimeError("an idempotent route must authenticate its caller first")
        route = f"{self._request.method} {self._request.scope['path']}"
        attempt = Attempt(caller, route, self._key, payload.model_dump_json())
        answer = await run_in_threadpool(run_once, self._core, attempt, call)
        return _json(status, answer.body, {REPLAYED_HEADER: "true"} if answer.replayed else None)


def _json(status: int, body: str, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, headers=headers, media_type="application/json")
