"""The operator's controls seen by real clients: a `fedtune-client train` process waits while
its federation is paused, trains once it resumes, and stops with one line when it is
cancelled; the SDK's admin methods against a real `fedtune-server serve` process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from client_sdk._exceptions import ConflictError
from lab.local_federation import ServerProcess, register, start_client, train_args
from shared.blobs import sha256_file
from shared.spec import FederationSpec, RoundsSpec, load_spec
from tests.deltas import make_delta
from tests.images import write_image_folder

pytestmark = [pytest.mark.e2e]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _spec(**rounds: float) -> FederationSpec:
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    lt = spec.local_training.model_copy(update={"epochs": 1, "batch_size": 8, "max_steps": 2})
    rs = RoundsSpec(**{"total": 2, "quorum": 2, "min_updates": 2, "deadline_s": 600, **rounds})
    return spec.model_copy(update={"rounds": rs, "local_training": lt})


def _wait_for_line(log: Path, text: str, proc: object, timeout: float = 180) -> None:
    """Until the client's log holds `text` (bounded, so a broken client fails the test)."""
    until = time.monotonic() + timeout
    while text not in (log.read_text(errors="replace") if log.exists() else ""):
        assert proc.poll() is None, log.read_text(errors="replace")  # type: ignore[attr-defined]
        assert time.monotonic() < until, f"no {text!r} in:\n{log.read_text(errors='replace')}"
        time.sleep(0.2)


def test_train_waits_while_paused_trains_on_resume_and_stops_when_cancelled(
    server: ServerProcess, tmp_path: Path
) -> None:
    admin = server.admin()
    info = admin.create_federation(_spec())
    admin.pause_federation(info.id)
    creds = tmp_path / "credentials.json"
    register(server, admin.create_enrollment_token(info.id).token, "org-a", creds)
    data = write_image_folder(tmp_path / "data", info.spec.task.classes, 3)
    client = start_client(
        "org-a", train_args(server, creds, data, tmp_path / "work"), tmp_path / "client.log"
    )
    try:
        _wait_for_line(client.log_path, "paused by its operator", client.proc)
        while_paused = admin.current_round(info.id)

        admin.resume_federation(info.id)
        status = admin.current_round(info.id)
        until = time.monotonic() + 300
        while status.received == 0:
            assert client.proc.poll() is None, client.output()
            assert time.monotonic() < until, client.output()
            status = admin.current_round(info.id, wait_s=10, revision=status.revision)
        record = admin.get_round(info.id, 1)

        admin.cancel_federation(info.id)
        code = client.wait(timeout=120)
    finally:
        if client.proc.poll() is None:
            client.proc.kill()
    output = client.output()

    assert (while_paused.federation_status, while_paused.received) == ("paused", 0)
    assert "federation resumed" in output
    assert record.participant_count == 1 and record.status == "open"
    assert code == 1, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert errors == [
        f"fedtune-client: error: federation {info.id} was cancelled by its operator (in round "
        "1); this client stops, and there is no final model"
    ], output
    listed = {f.id: f.status for f in admin.list_federations()}
    assert listed[info.id] == "cancelled"


def test_sdk_downloads_the_final_model_once_completed(
    server: ServerProcess, tmp_path: Path
) -> None:
    admin = server.admin()
    info = admin.create_federation(_spec(total=1, quorum=1, min_updates=1))
    token = admin.create_enrollment_token(info.id).token
    key = admin.register_client(token, "org-b").api_key
    with pytest.raises(ConflictError) as early:
        admin.download_model(info.id, tmp_path / "early.safetensors")
    with server.http(key) as http:
        r = http.put(
            f"/v1/federations/{info.id}/rounds/1/update",
            content=make_delta(info, 1, info.global_version),
        )
    assert r.status_code == 201, r.text
    status = admin.current_round(info.id)
    while status.federation_status != "completed":
        status = admin.current_round(info.id, wait_s=10, revision=status.revision)

    model = admin.download_model(info.id, tmp_path / "model.safetensors")
    state = admin.download_state(info.id, tmp_path / "state.safetensors")

    assert early.value.code == "not_completed"
    assert not (tmp_path / "early.safetensors").exists()
    assert model.sha256 == state.sha256 == status.global_version
    assert sha256_file(tmp_path / "model.safetensors") == status.global_version
    assert admin.get_federation(info.id).status == "completed"
