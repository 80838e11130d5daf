"""The vendored Swagger UI assets are the files their note names, and ship in the wheel (so
a non-editable install and the image serve `/docs` too)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from aggregator_service.api.routes.docs import ASSETS_DIR, SWAGGER_UI_VERSION

ROOT = Path(__file__).resolve().parents[2]


def _noted_files() -> dict[str, str]:
    """name -> sha256 from the table in the vendored README."""
    rows = re.findall(r"^\| (\S+) \| \d+ \| ([0-9a-f]{64}) \|$", _note(), flags=re.MULTILINE)
    return dict(rows)


def _note() -> str:
    return (ASSETS_DIR / "README.md").read_text(encoding="utf-8")


def test_vendored_assets_match_their_note():
    noted = _noted_files()

    assert f"swagger-ui-dist` {SWAGGER_UI_VERSION}" in _note()
    assert {p.name for p in ASSETS_DIR.iterdir()} == {*noted, "README.md"}
    for name, digest in noted.items():
        assert hashlib.sha256((ASSETS_DIR / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.slow
def test_wheel_contains_the_vendored_assets(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "aggregator_service", src / "aggregator_service", ignore=ignore)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]

    subprocess.run([*cmd, str(src), "-w", str(tmp_path / "out")], check=True, timeout=300)

    (wheel,) = (tmp_path / "out").glob("fedtune-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if n.startswith("aggregator_service/static/")}
    want = {f"aggregator_service/static/swagger-ui/{n}" for n in (*_noted_files(), "README.md")}
    assert shipped == want
