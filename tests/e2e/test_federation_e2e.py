"""A whole federation over TLS: a real aggregator process and three client processes.

For both model families: `fedtune-server serve` with a trustme certificate,
three organisations registered and trained with `fedtune-client` (trusting the
CA through --ca-cert), two rounds with a quorum of three.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_sdk.credentials import Credentials, save
from lab.local_federation import (
    ServerProcess,
    client_command,
    quiet_env,
    register,
    start_client,
    start_server,
    train_args,
)
from shared.spec import FederationSpec, RoundsSpec, load_spec
from tests.images import write_image_folder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ORGS = ["org-a", "org-b", "org-c"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tls) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("server"), tls=tls)
    yield proc
    proc.stop()


def two_round_spec(example: str) -> FederationSpec:
    spec = load_spec(EXAMPLES / example)
    lt = spec.local_training.model_copy(update={"epochs": 1, "batch_size": 8, "max_steps": 4})
    rounds = RoundsSpec(total=2, quorum=3, min_updates=3, deadline_s=600)
    return spec.model_copy(update={"rounds": rounds, "local_training": lt})


@pytest.mark.parametrize("example", ["tiny-clip-bias.yaml", "tiny-vit-lora.yaml"])
def test_three_clients_complete_two_rounds_over_tls(server, tls, tmp_path, example):
    spec = two_round_spec(example)
    admin = server.admin()
    info = admin.create_federation(spec)
    procs = []
    for i, org in enumerate(ORGS):
        token = admin.create_enrollment_token(info.id).token
        creds = tmp_path / org / "credentials.json"
        register(server, token, org, creds)
        data = write_image_folder(tmp_path / org / "data", spec.task.classes, 4, seed=i)
        (data / spec.task.classes[0] / "broken.png").write_bytes(b"not an image")
        args = train_args(server, creds, data, tmp_path / org / "work")
        procs.append(start_client(org, args, tmp_path / org / "client.log"))

    codes = [p.wait(timeout=600) for p in procs]

    assert codes == [0, 0, 0], "\n".join(p.output()[-3000:] for p in procs)
    history = admin.list_rounds(info.id)
    assert [(r.round, r.status, len(r.participants)) for r in history] == [
        (1, "closed", 3),
        (2, "closed", 3),
    ]
    versions = [info.global_version, *(r.result_version for r in history)]
    assert len(set(versions)) == 3
    logs = [(tmp_path / org / "client.log").read_text() for org in ORGS]
    for org, log in zip(ORGS, logs, strict=True):
        assert (tmp_path / org / "work" / "final" / "trainable.safetensors").is_file()
        assert "completed; final trainable state saved to" in log
    # images are decoded lazily: the broken one is skipped (with a warning) where it is met,
    # and a round capped by max_steps may never meet it
    assert any("skipping unreadable image" in log and "broken.png" in log for log in logs)
    status = subprocess.run(
        client_command("status", "--credentials", str(tmp_path / ORGS[0] / "credentials.json")),
        env=quiet_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert f"federation {info.id}" in status.stdout and ": completed" in status.stdout
    assert "privacy: none (the service sees each update)" in status.stdout
    assert "2 round(s)" in status.stdout


def test_server_certificate_from_an_unknown_ca_is_refused_with_a_hint(server, tmp_path):
    creds = tmp_path / "creds.json"
    fields = {"client_id": "cli_x", "api_key": "ftk_x", "federation_id": "fed_x", "name": "x"}
    save(Credentials(server=server.url, **fields), creds)

    done = subprocess.run(
        client_command("status", "--credentials", str(creds)),
        env=quiet_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "could not be verified" in lines[0] and "--ca-cert" in lines[0]
