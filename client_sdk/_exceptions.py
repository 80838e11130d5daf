"""The SDK's exceptions: one small tree, like openai-python's.

FedTuneError
├── InsecureTransportError        plain http:// without opting in
├── APIResponseValidationError    a response that is not what the API promises
├── APIConnectionError            no answer (refused, reset, DNS, TLS)
│   └── APITimeoutError
└── APIStatusError                a 4xx/5xx answer, parsed from ErrorBody
    ├── BadRequestError 400, AuthenticationError 401, PermissionDeniedError 403,
    ├── NotFoundError 404, ConflictError 409, PayloadTooLargeError 413,
    └── UnprocessableEntityError 422, RateLimitError 429, InternalServerError 5xx
"""

from __future__ import annotations

import httpx
from pydantic import ValidationError

from shared.api import ErrorBody, RoundStatus

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "FedTuneError",
    "InsecureTransportError",
    "InternalServerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "UnprocessableEntityError",
    "UsageError",
]


class FedTuneError(Exception):
    """Base of every error the SDK raises."""


class UsageError(FedTuneError):
    """A bad argument or input file, refused before anything is written (the CLI exits 2)."""


class InsecureTransportError(FedTuneError, ValueError):
    """A plain-http URL given without `allow_http=True`."""


class APIResponseValidationError(FedTuneError):
    """The server answered 2xx with something the API does not allow (bad JSON, wrong hash)."""


class APIConnectionError(FedTuneError):
    """The request got no HTTP answer."""

    def __init__(self, message: str, *, url: str | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.url = url
        self.retryable = retryable  # False for failures no retry can fix (untrusted certificate)


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class APIStatusError(FedTuneError):
    """A 4xx/5xx answer. `code`, `detail` and `round` come from the ErrorBody."""

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        code: str,
        detail: str,
        round: RoundStatus | None = None,
    ) -> None:
        super().__init__(message)
        self.response = response
        self.status = response.status_code
        self.code = code
        self.detail = detail
        self.round = round


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401: missing, wrong or revoked token."""


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404."""


class ConflictError(APIStatusError):
    """409: stale base version, closed round, different bytes, completed federation."""


class PayloadTooLargeError(APIStatusError):
    """413."""


class UnprocessableEntityError(APIStatusError):
    """422."""


class RateLimitError(APIStatusError):
    """429."""


class InternalServerError(APIStatusError):
    """5xx."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def make_status_error(response: httpx.Response) -> APIStatusError:
    """Build the subclass for `response`'s status from its ErrorBody (or its raw text)."""
    status = response.status_code
    cls = _BY_STATUS.get(status, InternalServerError if status >= 500 else APIStatusError)
    try:
        body = ErrorBody.model_validate_json(response.read())
        code, detail, round_ = body.error, body.detail, body.round
    except (ValidationError, ValueError):
        code = f"http_{status}"
        detail = (response.text or response.reason_phrase or "").strip()[:300]
        round_ = None
    message = f"{status} {code}: {detail}" if detail else f"{status} {code}"
    return cls(message, response=response, code=code, detail=detail, round=round_)
