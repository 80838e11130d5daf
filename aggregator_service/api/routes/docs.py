"""`/docs`: Swagger UI from assets vendored in the package, so no page load reaches a CDN.

The asset URLs carry the Swagger UI version, so the files are cached as immutable; none of
these routes is part of the OpenAPI document.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["SWAGGER_UI_VERSION", "install_docs"]

SWAGGER_UI_VERSION = "5.35.0"
ASSETS_DIR = Path(__file__).resolve().parents[2] / "static" / "swagger-ui"
ASSETS_URL = f"/static/swagger-ui/{SWAGGER_UI_VERSION}"
_IMMUTABLE = "public, max-age=31536000, immutable"


class _ImmutableFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers["Cache-Control"] = _IMMUTABLE
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _content_security_policy(html: str) -> str:
    """Only this origin, plus the page's own inline start-up script (by its hash);
    `connect-src 'self'` keeps "Try it out" on this server."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in scripts
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def install_docs(app: FastAPI, openapi_url: str) -> None:
    """Serve the Swagger UI page at `/docs` and its assets under `ASSETS_URL`."""
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
        oauth2_redirect_url=None,
        # Swagger UI would otherwise load a badge from its public validator service.
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = bytes(page.body).decode()
    headers = {"Content-Security-Policy": _content_security_policy(html)}
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    def docs() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    app.include_router(router)
    app.mount(ASSETS_URL, _ImmutableFiles(directory=ASSETS_DIR), name="swagger-ui")
