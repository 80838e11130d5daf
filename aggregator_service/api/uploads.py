"""Receiving a streamed safetensors upload: a round's delta or a secure round's masked input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from fastapi import Request

from aggregator_service.api.errors import close_on_refusal
from aggregator_service.services.runner import RoundRunner
from aggregator_service.services.uploads import Expected, Received, receive_body

__all__ = ["receive_upload"]

Receipt = TypeVar("Receipt")


async def receive_upload(
    runner: RoundRunner,
    request: Request,
    client_id: str,
    expect: Callable[[], Expected],
    ingest: Callable[[Received], Receipt],
) -> Receipt:
    """`ingest`'s receipt for the request's body, streamed to disk while one of the client's
    upload slots is held, and refused as soon as its header disagrees with `expect()`."""
    length = request.headers.get("content-length")
    close_on_refusal(request)
    with runner.uploads.hold(client_id):
        expected = await asyncio.to_thread(expect)
        body = await receive_body(runner.core, request.stream(), length, expected)
        return await asyncio.to_thread(ingest, body)
