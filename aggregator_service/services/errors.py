"""The refusals the services raise, in the domain's words.

Each carries the machine `error` code the API shows, a `detail` saying what
to do, and, where it helps, the current round. Which HTTP status each kind
answers with is the API layer's business (`aggregator_service.api.errors`).
"""

from __future__ import annotations

from shared.api import RoundStatus

__all__ = [
    "Busy",
    "Conflict",
    "DomainError",
    "Forbidden",
    "Invalid",
    "Malformed",
    "NotFound",
    "TimedOut",
    "TooLarge",
    "Unauthorized",
]


class DomainError(Exception):
    """A refusal the caller can act on; nothing was changed by the request that raised it."""

    default_error = "error"

    def __init__(
        self, detail: str, *, error: str | None = None, round: RoundStatus | None = None
    ) -> None:
        super().__init__(detail)
        self.error = error or self.default_error
        self.detail = detail
        self.round = round


class Unauthorized(DomainError):
    """The caller is unknown: no credential, or one that is wrong, spent or revoked."""

    default_error = "unauthorized"


class Forbidden(DomainError):
    """The caller is known but may not do this here."""

    default_error = "forbidden"


class NotFound(DomainError):
    """No such federation, client, state or base."""

    default_error = "not_found"


class Conflict(DomainError):
    """The request contradicts the current state (a closed round, a different update, ...)."""

    default_error = "conflict"


class TooLarge(DomainError):
    """The body is larger than this server accepts."""

    default_error = "payload_too_large"


class TimedOut(DomainError):
    """The body arrived too slowly (an idle gap, or a rate below the floor); nothing was kept."""

    default_error = "request_timeout"


class Busy(DomainError):
    """The caller already runs as many requests of this kind as it may; retry after a pause."""

    default_error = "too_many_requests"

    def __init__(self, detail: str, *, retry_after_s: int, error: str | None = None) -> None:
        super().__init__(detail, error=error)
        self.retry_after_s = retry_after_s


class Invalid(DomainError):
    """The input is readable but wrong: a field, a spec, an update's content."""

    default_error = "validation_error"


class Malformed(Invalid):
    """The input cannot even be read as what it claims to be (not a safetensors file)."""
