"""`/dashboard`: the federations, one federation's live view, signing in and out, static files.

Pages are rendered on the server (Jinja2); each then polls its `live` JSON every two seconds
and redraws in place. No route here is part of the API's OpenAPI document.
An unauthenticated page request is sent to the sign-in page; the JSON answers 401.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import yaml
from fastapi import APIRouter, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from aggregator_service.dashboard.assets import IMMUTABLE, asset, asset_url
from aggregator_service.dashboard.format import FILTERS
from aggregator_service.dashboard.session import (
    LOGIN_PATH,
    clear_cookie,
    cookie_token,
    safe_next,
    secure_headers,
    set_cookie,
)
from aggregator_service.services.context import Core
from aggregator_service.services.dashboard import federation_rows, live_view
from aggregator_service.services.errors import NotFound, Unauthorized
from aggregator_service.services.viewers import Viewer, authenticate_viewer
from shared.api import ErrorBody

__all__ = ["router"]

router = APIRouter(prefix="/dashboard", include_in_schema=False)

TEMPLATES = Path(__file__).resolve().parent / "templates"
POLL_MS = 2000
_FORM_FIELDS = 8  # the sign-in form sends two: token and next
_TOO_MANY_FIELDS = "Too many fields: send the sign-in form (token and next) only."
_NO_LONGER_VALID = "Your token is no longer accepted (revoked or replaced): sign in again."


@cache
def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static"] = asset_url
    env.filters.update(FILTERS)
    return env


def _page(template: str, status: int = 200, **context: Any) -> Response:
    html = _templates().get_template(template).render(**context)
    return secure_headers(HTMLResponse(html, status_code=status))


def _core(request: Request) -> Core:
    core: Core = request.app.state.core
    return core


def _viewer(request: Request) -> Viewer | None:
    """Who the cookie signs in, or None (no cookie, or its token is unknown or revoked)."""
    try:
        return authenticate_viewer(_core(request), cookie_token(request))
    except Unauthorized:
        return None


def _to_login(request: Request) -> Response:
    """To the sign-in page, returning here after; a cookie whose token is refused is cleared
    and the page says why."""
    query = {"next": safe_next(request.url.path)}
    refused = cookie_token(request) is not None
    if refused:
        query["refused"] = "1"
    response = RedirectResponse(f"{LOGIN_PATH}?{urlencode(query)}", status_code=303)
    if refused:
        clear_cookie(request, response)
    return secure_headers(response)


@router.get("")
def index(request: Request) -> Response:
    viewer = _viewer(request)
    if viewer is None:
        return _to_login(request)
    rows = federation_rows(_core(request))
    return _page("index.html", viewer=viewer, federations=rows, poll_ms=POLL_MS)


@router.get("/live")
def index_live(request: Request) -> Response:
    """The federations list's figures, polled: 401 JSON once signed out or refused."""
    if _viewer(request) is None:
        return _unauthorized()
    rows = federation_rows(_core(request))
    body = "[" + ",".join(r.model_dump_json() for r in rows) + "]"
    return secure_headers(Response(body, media_type="application/json"))


@router.get("/login")
def login_form(request: Request, next: str | None = None, refused: str | None = None) -> Response:
    message = _NO_LONGER_VALID if refused else None
    return _page("login.html", next=safe_next(next), message=message)


@router.post("/login")
async def login(request: Request) -> Response:
    """The sign-in form (urlencoded `token` and `next`); the body is bounded by BodyGuard."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _page("login.html", 415, next="/dashboard", message="Send the sign-in form.")
    form = (await request.body()).decode("utf-8", "replace")
    try:
        fields = parse_qs(form, max_num_fields=_FORM_FIELDS)
    except ValueError:  # more fields than that
        return _page("login.html", 400, next="/dashboard", message=_TOO_MANY_FIELDS)
    target = safe_next((fields.get("next") or [""])[0])
    token = (fields.get("token") or [""])[0].strip()
    try:
        await run_in_threadpool(authenticate_viewer, _core(request), token)
    except Unauthorized:
        message = "That token is not valid: unknown, revoked or mistyped." if token else None
        message = message or "Enter the admin token or a viewer token."
        return _page("login.html", 401, next=target, message=message)
    response = RedirectResponse(target, status_code=303)
    set_cookie(request, response, token)
    return secure_headers(response)


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    clear_cookie(request, response)
    return secure_headers(response)


@router.get("/federations/{fid}")
def federation(request: Request, fid: str) -> Response:
    viewer = _viewer(request)
    if viewer is None:
        return _to_login(request)
    core = _core(request)
    try:
        view = live_view(core, fid)
    except NotFound:
        return _page("missing.html", 404, viewer=viewer, fid=fid)
    spec = core.spec(fid)
    spec_yaml = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    return _page(
        "federation.html",
        viewer=viewer,
        spec=spec,
        view=view,
        spec_yaml=spec_yaml,
        live_url=f"/dashboard/federations/{fid}/live",
        poll_ms=POLL_MS,
    )


@router.get("/federations/{fid}/live")
def live(request: Request, fid: str) -> Response:
    """The federation page's figures, polled: 401 JSON once signed out or revoked."""
    if _viewer(request) is None:
        return _unauthorized()
    try:
        view = live_view(_core(request), fid)
    except NotFound as exc:
        body = ErrorBody(error=exc.error, detail=exc.detail)
        return secure_headers(JSONResponse(body.model_dump(mode="json"), status_code=404))
    return secure_headers(Response(view.model_dump_json(), media_type="application/json"))


def _unauthorized() -> Response:
    body = ErrorBody(error="unauthorized", detail="sign in at /dashboard/login")
    return secure_headers(JSONResponse(body.model_dump(mode="json"), status_code=401))


@router.get("/static/{digest}/{name}")
def static(digest: str, name: str) -> Response:
    found = asset(digest, name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(
        found.body,
        media_type=found.media_type,
        headers={
            "Cache-Control": IMMUTABLE,
            "ETag": f'"{found.digest}"',
            "X-Content-Type-Options": "nosniff",
        },
    )
