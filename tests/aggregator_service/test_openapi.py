"""The committed OpenAPI document is what a running server serves, and it reads well in a
generated client: every operation has a snake_case operationId, a summary and a described tag."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from aggregator_service.cli import openapi_document

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
STALE = "docs/openapi.json is stale: run `fedtune-server export-openapi --output docs/openapi.json`"
OPERATION_ID = re.compile(r"^[a-z][a-z_]*$")


@pytest.fixture(scope="module")
def document() -> str:
    return openapi_document()


@pytest.fixture(scope="module")
def served(start_module_app) -> dict[str, Any]:
    """The document a running server answers `GET /openapi.json` with, over HTTP."""
    app = start_module_app()
    with app.client(None) as http:
        r = http.get("/openapi.json")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


def test_committed_openapi_matches_the_served_document(served: dict[str, Any]):
    assert json.loads(COMMITTED.read_text(encoding="utf-8")) == served, STALE


def test_committed_openapi_is_the_export_byte_for_byte(document: str):
    assert COMMITTED.read_text(encoding="utf-8") == document, STALE


def test_every_operation_has_a_unique_snake_case_operation_id(served: dict[str, Any]):
    ids = [op.get("operationId", "") for _, _, op in _operations(served)]

    bad = [i for i in ids if not OPERATION_ID.fullmatch(i)]
    assert not bad, f"operationIds that are not snake_case: {bad}"
    assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)


def test_the_operation_ids_integrators_call_are_the_documented_names(served: dict[str, Any]):
    ids = {(m.upper(), p): op["operationId"] for m, p, op in _operations(served)}

    assert ids[("POST", "/v1/federations")] == "create_federation"
    assert ids[("GET", "/v1/federations")] == "list_federations"
    assert ids[("GET", "/v1/federations/{fid}")] == "get_federation"
    assert ids[("POST", "/v1/federations/{fid}/pause")] == "pause_federation"
    assert ids[("POST", "/v1/federations/{fid}/resume")] == "resume_federation"
    assert ids[("POST", "/v1/federations/{fid}/cancel")] == "cancel_federation"
    assert ids[("POST", "/v1/federations/{fid}/enrollment-tokens")] == "create_enrollment_token"
    assert ids[("GET", "/v1/federations/{fid}/rounds/current")] == "get_current_round"
    assert ids[("GET", "/v1/federations/{fid}/rounds")] == "list_rounds"
    assert ids[("GET", "/v1/federations/{fid}/rounds/{r}")] == "get_round"
    assert ids[("PUT", "/v1/federations/{fid}/rounds/{r}/update")] == "upload_update"
    assert ids[("GET", "/v1/federations/{fid}/state")] == "download_state"
    assert ids[("GET", "/v1/federations/{fid}/base")] == "download_base"
    assert ids[("GET", "/v1/federations/{fid}/model")] == "download_model"
    assert ids[("POST", "/v1/clients")] == "register_client"
    assert ids[("POST", "/v1/clients/{cid}/key")] == "rotate_client_key"


def test_every_operation_has_a_one_line_summary_and_one_described_tag(served: dict[str, Any]):
    described = {t["name"] for t in served.get("tags", []) if t.get("description")}

    for method, path, op in _operations(served):
        summary = op.get("summary", "")
        assert summary and "\n" not in summary, f"{method} {path}: no one-line summary"
        assert len(op.get("tags", [])) == 1, f"{method} {path}: tags {op.get('tags')}"
        assert op["tags"][0] in described, f"{method} {path}: tag {op['tags'][0]} undescribed"


def test_every_v1_operation_declares_its_errors(served: dict[str, Any]):
    for method, path, op in _operations(served):
        if path.startswith("/v1/"):
            assert any(code.startswith("4") for code in op["responses"]), (method, path)


def test_upload_declares_a_binary_body_and_error_bodies(served: dict[str, Any]):
    op = served["paths"]["/v1/federations/{fid}/rounds/{r}/update"]["put"]
    schema = op["requestBody"]["content"]["application/octet-stream"]["schema"]
    assert schema == {"format": "binary", "type": "string"}
    assert op["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
