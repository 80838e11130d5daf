"""The dashboard's static files, served from the package under a content-hashed path.

`/dashboard/static/<hash>/<name>`: the hash is the first 16 hex digits of the file's sha256,
so a changed file gets a new URL and every file is cached as immutable. Only the files in
this package's `static/` directory are served, by exact name.

Vendored: uPlot 1.6.32 (MIT, `uPlot-1.6.32.LICENSE`), `dist/uPlot.iife.min.js` and
`dist/uPlot.min.css` from its npm package, unmodified.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["PREFIX", "Asset", "asset", "asset_url"]

PREFIX = "/dashboard/static"
STATIC_DIR = Path(__file__).resolve().parent / "static"
IMMUTABLE = "public, max-age=31536000, immutable"

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    digest: str  # first 16 hex digits of the sha256
    media_type: str


@cache
def _assets() -> dict[str, Asset]:
    out = {}
    for path in sorted(STATIC_DIR.iterdir()):
        if path.is_file() and path.suffix in _TYPES:
            body = path.read_bytes()
            digest = hashlib.sha256(body).hexdigest()[:16]
            out[path.name] = Asset(path.name, body, digest, _TYPES[path.suffix])
    return out


def asset(digest: str, name: str) -> Asset | None:
    """The file `name` when `digest` is its current hash; else None."""
    found = _assets().get(name)
    return found if found is not None and found.digest == digest else None


def asset_url(name: str) -> str:
    """The immutable URL of a static file (KeyError for one that is not there)."""
    return f"{PREFIX}/{_assets()[name].digest}/{name}"
