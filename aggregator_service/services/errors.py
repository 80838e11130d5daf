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
    """A refusal the caller can act on; nothing was changed by the request that raised it.

    A subclass names its default code as a class keyword: `class NotFound(DomainError,
    error="not_found")`.
    """

    default_error = "error"

    def __init_subclass__(cls, *, error: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if error is not None:
            cls.default_error = error

    def __init__(
        self, detail: str, *, error: str | None = None, round: RoundStatus | None = None
    ) -> None:
        super().__init__(detail)
        self.error = error or self.default_error
        self.detail = detail
        self.round = round


class Unauthorized(DomainError, error="unauthorized"):
    """The caller is unknown: no credential, or one that is wrong, spent or revoked."""


class Forbidden(DomainError, error="forbidden"):
    """The caller is known but may not do this here."""


class NotFound(DomainError, error="not_found"):
    """No such federation, client, state or base."""


class Conflict(DomainError, error="conflict"):
    """The request contradicts the current state (a closed round, a different update, ...)."""


class TooLarge(DomainError, error="payload_too_large"):
    """The body is larger than this server accepts."""


class TimedOut(DomainError, error="request_timeout"):
    """The body arrived too slowly (an idle gap, or a rate below the floor); nothing was kept."""


class Busy(DomainError, error="too_many_requests"):
    """The caller already runs as many requests of this kind as it may; retry after a pause."""

    def __init__(self, detail: str, *, retry_after_s: int, error: str | None = None) -> None:
        super().__init__(detail, error=error)
        self.retry_after_s = retry_after_s


class Invalid(DomainError, error="validation_error"):
    """The input is readable but wrong: a field, a spec, an update's content."""


class Malformed(Invalid):
    """The input cannot even be read as what it claims to be (not a safetensors file)."""
