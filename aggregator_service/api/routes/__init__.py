"""One router per resource."""

from __future__ import annotations

from fastapi import APIRouter

from aggregator_service.api.errors import error_responses

__all__ = ["resource_router"]


def resource_router(prefix: str, tag: str) -> APIRouter:
    """A resource's router: every operation on it takes a credential, so may answer 401 or 403."""
    return APIRouter(prefix=prefix, tags=[tag], responses=error_responses(401, 403))
