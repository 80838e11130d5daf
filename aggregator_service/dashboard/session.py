"""Signing in to the dashboard: the token in an HttpOnly, SameSite=Strict cookie, and the
headers every dashboard page carries.

The cookie holds the token itself (unpadded base64url: cookie values are restricted), so every
request checks it again: a revoked viewer token, or an admin token taken out of the token
file, stops working at the next request.

It is `Secure` whenever browsers reach the service over TLS: the request came over TLS, or a
TLS-terminating proxy is in front (`insecure_http`: the proxy speaks plain HTTP to the service,
from an address whose X-Forwarded-Proto is not trusted). So a browser never sends it in plain
HTTP to that host, even when an attacker on the network makes it load an http:// URL there.
Only plain HTTP on loopback (development) sets it without: that traffic never leaves the
machine, and a browser that does not treat loopback as a secure origin would drop a `Secure`
cookie set over plain HTTP, so signing in would never hold.
"""

from __future__ import annotations

import base64
import binascii
import re

from starlette.requests import Request
from starlette.responses import Response

from aggregator_service.settings import Settings

__all__ = [
    "COOKIE",
    "LOGIN_PATH",
    "clear_cookie",
    "cookie_token",
    "safe_next",
    "secure_headers",
    "set_cookie",
]

COOKIE = "fedtune_dashboard"
COOKIE_PATH = "/dashboard"
COOKIE_MAX_AGE_S = 12 * 3600
LOGIN_PATH = "/dashboard/login"

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_NEXT = re.compile(r"/dashboard(/federations/[A-Za-z0-9_-]{1,64})?")


def secure_headers(response: Response, cache: bool = False) -> Response:
    """Only this origin's scripts and styles, never framed, no referrer; not stored."""
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if not cache:
        response.headers["Cache-Control"] = "no-store"
    return response


def cookie_token(request: Request) -> str | None:
    """The token the browser's cookie holds, or None (none, or not one this service set)."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        padded = raw + "=" * (-len(raw) % 4)
        return base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None


def _over_tls(request: Request) -> bool:
    settings: Settings = request.app.state.core.settings
    return request.url.scheme == "https" or settings.insecure_http


def set_cookie(request: Request, response: Response, token: str) -> None:
    value = base64.urlsafe_b64encode(token.encode("utf-8")).decode("ascii").rstrip("=")
    response.set_cookie(
        COOKIE,
        value,
        max_age=COOKIE_MAX_AGE_S,
        path=COOKIE_PATH,
        secure=_over_tls(request),
        httponly=True,
        samesite="strict",
    )


def clear_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        COOKIE,
        path=COOKIE_PATH,
        secure=_over_tls(request),
        httponly=True,
        samesite="strict",
    )


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard page of this server, never elsewhere."""
    return target if target is not None and _NEXT.fullmatch(target) else "/dashboard"
