"""An integrator's view: a Python client generated from docs/openapi.json (offline) names its
modules after the operationIds, imports, and talks to a real server with the admin token."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.aggregator_service.conftest import ADMIN_TOKEN

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
PACKAGE = "fedtune_generated_client"
GENERATOR = Path(sys.executable).with_name("openapi-python-client")

# The modules a generated client must have: api/<tag>/<operationId>.py.
EXPECTED = {
    "federations": {
        "create_federation", "list_federations", "get_federation", "pause_federation",
        "resume_federation", "cancel_federation", "create_enrollment_token",
        "list_enrollment_tokens", "revoke_enrollment_token",
    },
    "rounds": {"get_current_round", "list_rounds", "get_round", "upload_update"},
    "states": {"download_state", "download_base", "download_model"},
    "clients": {"register_client", "list_clients", "revoke_client", "rotate_client_key"},
    "evaluations": {"report_evaluation", "list_evaluations"},
    "health": {"check_liveness", "check_readiness", "get_metrics"},
    "viewers": {"create_viewer_token", "list_viewer_tokens", "revoke_viewer_token"},
    "secure_aggregation": {
        "get_secure_aggregation", "advertise_keys", "share_keys", "get_shares",
        "report_bad_share", "upload_masked_input", "send_unmask_shares",
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Generate the client package into a temp dir and put it on sys.path for the module."""
    root = tmp_path_factory.mktemp("generated")
    config = root / "config.yaml"
    config.write_text("post_hooks: []\n")  # no formatter runs: nothing outside the venv needed
    done = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(DOCUMENT), "--config", str(config),
         "--meta", "none", "--output-path", str(root / PACKAGE)],
        capture_output=True, text=True, timeout=300, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(root))
    try:
        yield root / PACKAGE
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_generated_modules_are_named_after_the_operation_ids(generated: Path):
    found = {
        tag.name: {p.stem for p in tag.glob("*.py") if p.stem != "__init__"}
        for tag in (generated / "api").iterdir()
        if tag.is_dir() and not tag.name.startswith("__")
    }

    assert found == EXPECTED


def test_generated_client_lists_gets_and_polls_a_real_server(generated: Path, federation):
    fed = federation(clients=1)
    client_mod = _module("client")
    list_federations = _module("api.federations.list_federations")
    get_federation = _module("api.federations.get_federation")
    get_current_round = _module("api.rounds.get_current_round")
    models = _module("models")

    with client_mod.AuthenticatedClient(base_url=fed.app.url, token=ADMIN_TOKEN) as client:
        listed = list_federations.sync(client=client)
        info = get_federation.sync(fed.id, client=client)
        current = get_current_round.sync(fed.id, client=client)
        missing = get_federation.sync_detailed("fed_nosuch", client=client)

    assert [f.id for f in listed] == [fed.id]
    assert isinstance(listed[0], models.FederationSummary)
    assert str(listed[0].status) == "running"
    assert isinstance(info, models.FederationInfo)
    assert (info.id, info.global_version) == (fed.id, fed.info.global_version)
    assert info.spec.rounds.total == fed.info.spec.rounds.total
    assert isinstance(current, models.RoundStatus)
    assert (current.round_, current.received, current.revision) == (  # `round` is a builtin
        1,
        0,
        fed.status()["revision"],
    )
    assert missing.status_code == 404
    assert isinstance(missing.parsed, models.ErrorBody) and missing.parsed.error == "not_found"


def test_generated_client_pauses_a_federation_and_sees_the_refusal_of_a_wrong_token(
    generated: Path, federation
):
    fed = federation(clients=1)
    client_mod = _module("client")
    pause_federation = _module("api.federations.pause_federation")
    list_federations = _module("api.federations.list_federations")
    models = _module("models")

    with client_mod.AuthenticatedClient(base_url=fed.app.url, token=ADMIN_TOKEN) as client:
        paused = pause_federation.sync(fed.id, client=client)
    with client_mod.AuthenticatedClient(base_url=fed.app.url, token="fta_wrong") as client:
        refused = list_federations.sync_detailed(client=client)

    assert isinstance(paused, models.FederationInfo) and str(paused.status) == "paused"
    assert fed.status()["federation_status"] == "paused"
    assert refused.status_code == 401 and refused.parsed.error == "unauthorized"
