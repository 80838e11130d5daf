"""The committed OpenAPI document matches the app, and documents every operation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aggregator_service.cli import openapi_document

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def document() -> str:
    return openapi_document()


def test_committed_openapi_matches_the_app(document: str):
    assert COMMITTED.read_text(encoding="utf-8") == document, (
        "docs/openapi.json is stale: run `fedtune-server export-openapi --output docs/openapi.json`"
    )


def test_every_operation_has_a_summary_and_declared_errors(document: str):
    doc = json.loads(document)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), f"{method} {path} has no summary"
            if path.startswith("/v1/"):
                assert any(code.startswith("4") for code in op["responses"]), (method, path)


def test_upload_declares_a_binary_body_and_error_bodies(document: str):
    op = json.loads(document)["paths"]["/v1/federations/{fid}/rounds/{r}/update"]["put"]
    schema = op["requestBody"]["content"]["application/octet-stream"]["schema"]
    assert schema == {"format": "binary", "type": "string"}
    assert op["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
