"""`fedtune-server admin ...` against a real `fedtune-server serve` process over TLS: each
command, its table and `--json` output, and its failures (one line on stderr, exit 2)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from client_sdk.credentials import load
from client_sdk.secagg import SecureRound
from lab.local_federation import (
    ServerProcess,
    free_port,
    quiet_env,
    register,
    server_command,
    start_server,
)
from shared.spec import parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ADMIN = "fta_admin-cli-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tls) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("admin-cli")
    token_file = root / "admin-token"
    token_file.write_text(ADMIN + "\n")
    proc = start_server(root / "data", tls=tls, admin_token_file=token_file)
    yield proc
    proc.stop()


def admin(server: ServerProcess, *args: str, env: dict[str, str] | None = None, **kw: Any):
    """Run `fedtune-server admin ARGS` against `server` with its admin token file."""
    connection = ["--server", server.url, "--ca-cert", str(server.ca_cert)]
    if "--admin-token-file" not in args and env is None:
        connection += ["--admin-token-file", str(server.admin_token_file)]
    return subprocess.run(
        server_command("admin", *args, *connection),
        capture_output=True,
        text=True,
        timeout=300,
        env=env or quiet_env(),
        **kw,
    )


def admin_json(server: ServerProcess, *args: str) -> Any:
    done = admin(server, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a command that failed with exit status 2."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and done.stdout == "", done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def fid(server: ServerProcess) -> str:
    spec = str(EXAMPLES / "tiny-clip-bias.yaml")
    created = admin_json(server, "federations", "create", "--spec", spec)
    assert created["status"] == "running" and created["current_round"] == 1
    return str(created["id"])


def test_create_prints_the_new_federation(server):
    done = admin(server, "federations", "create", "--spec", str(EXAMPLES / "tiny-vit-lora.yaml"))

    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("federation fed_") and first.endswith(": running")
    assert "method lora" in done.stdout


def test_list_shows_a_table_and_json(server, fid):
    table = admin(server, "federations", "list")
    listed = admin_json(server, "federations", "list")

    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "ROUND", "CREATED"]
    assert any(row.split()[:3] == [fid, "tiny-clip-bias", "running"] for row in rows), rows
    mine = next(f for f in listed if f["id"] == fid)
    assert (mine["status"], mine["current_round"], mine["total_rounds"]) == ("running", 1, 3)


def test_show_follows_a_secure_round_s_protocol(server, tmp_path):
    spec = yaml.safe_load((EXAMPLES / "tiny-clip-bias.yaml").read_text())
    spec["rounds"] = {**spec["rounds"], "quorum": 2, "min_updates": 2}
    spec["secure_aggregation"] = {"neighbours": None}
    (tmp_path / "secure.yaml").write_text(yaml.safe_dump(spec))
    created = admin_json(server, "federations", "create", "--spec", str(tmp_path / "secure.yaml"))
    fid = created["id"]
    before = admin(server, "federations", "show", fid)
    tokens = [admin(server, "enroll", fid).stdout.strip() for _ in range(2)]
    for i, token in enumerate(tokens):
        register(server, token, f"org-{i}", tmp_path / f"org-{i}.json")
        creds = load(tmp_path / f"org-{i}.json")
        sdk = server.client(creds.api_key)
        SecureRound(sdk, parse_spec(spec), fid, creds.client_id, tmp_path / f"w{i}").advertise(1, 1)

    after = admin(server, "federations", "show", fid)
    plain = admin(server, "federations", "create", "--spec", str(EXAMPLES / "tiny-clip-bias.yaml"))

    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert "secure:    phase advertise, attempt 1" in before.stdout
    assert "cohort 0, shared keys 0, inputs counted 0" in before.stdout
    assert "secure:    phase share, attempt 1" in after.stdout
    assert "cohort 2, shared keys 0, inputs counted 0" in after.stdout
    assert "secure:" not in admin(server, "federations", "show", plain.stdout.split()[1]).stdout


def test_show_describes_one_federation(server, fid):
    done = admin(server, "federations", "show", fid)
    shown = admin_json(server, "federations", "show", fid)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"federation {fid} (tiny-clip-bias): running")
    assert "round:     1/3 open, 0/" in done.stdout
    assert shown["id"] == fid and shown["spec"]["method"]["name"] == "bias"


def test_pause_resume_cancel_change_the_status(server):
    spec = str(EXAMPLES / "tiny-clip-bias.yaml")
    fed = admin_json(server, "federations", "create", "--spec", spec)["id"]

    paused = admin(server, "federations", "pause", fed)
    with server.http(ADMIN) as http:
        seen = http.get(f"/v1/federations/{fed}/rounds/current").json()["federation_status"]
    resumed = admin_json(server, "federations", "resume", fed)
    cancelled = admin(server, "federations", "cancel", fed)

    assert paused.returncode == 0 and paused.stdout.strip().endswith(": paused")
    assert seen == "paused"
    assert resumed["status"] == "running"
    assert cancelled.returncode == 0 and cancelled.stdout.strip().endswith(": cancelled")
    line = refused(admin(server, "federations", "pause", fed))
    assert "409 federation_cancelled" in line


def test_enroll_prints_a_token_that_registers_a_client(server, fid):
    done = admin(server, "enroll", fid, "--uses", "2", "--expires-in", "3600")

    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    with server.http(ADMIN) as http:
        r = http.post("/v1/clients", json={"enrollment_token": token, "name": "org-enrolled"})
    assert r.status_code == 201, r.text
    assert token.startswith("fte_")


def test_enroll_json_gives_the_token_and_its_id(server, fid):
    issued = admin_json(server, "enroll", fid)

    assert issued["federation_id"] == fid and issued["uses"] == 1
    assert issued["token"].startswith("fte_") and len(issued["id"]) == 16


def test_clients_list_and_revoke(server, fid):
    token = admin_json(server, "enroll", fid)["token"]
    with server.http(ADMIN) as http:
        cid = http.post("/v1/clients", json={"enrollment_token": token, "name": "org-x"}).json()[
            "client_id"
        ]

    table = admin(server, "clients", "list", "--federation", fid)
    revoked = admin(server, "clients", "revoke", cid)
    listed = admin_json(server, "clients", "list", "--federation", fid)

    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["CLIENT", "NAME", "FEDERATION", "CREATED", "UPDATES", "STATUS"]
    assert any(r.split()[0] == cid and r.split()[-1] == "active" for r in rows), rows
    assert revoked.returncode == 0 and revoked.stdout.strip() == f"revoked client {cid} (org-x)"
    assert next(c for c in listed if c["client_id"] == cid)["revoked"] is True


def test_a_stored_control_character_is_printed_escaped(server, fid):
    token = admin_json(server, "enroll", fid)["token"]
    with server.http(ADMIN) as http:
        r = http.post("/v1/clients", json={"enrollment_token": token, "name": "org-y"})
    cid = r.json()["client_id"]
    # a row from before names were checked: it erases its own line and draws another
    forged = f"org-y\x1b[2K\r{cid}  org-z  {fid}  active"
    with sqlite3.connect(server.data_dir / "fedtune.db") as conn:
        conn.execute("UPDATE clients SET name = ? WHERE id = ?", (forged, cid))

    table = admin(server, "clients", "list", "--federation", fid)
    revoked = admin(server, "clients", "revoke", cid)

    assert table.returncode == revoked.returncode == 0, (table.stderr, revoked.stderr)
    assert "\x1b" not in table.stdout + revoked.stdout
    (row,) = [line for line in table.stdout.splitlines() if line.startswith(cid)]  # one line
    assert f"org-y\\x1b[2K\\r{cid}  org-z" in row
    assert revoked.stdout.startswith(f"revoked client {cid} (org-y\\x1b[2K\\r{cid}")


def test_the_admin_token_may_come_from_the_environment(server):
    env = quiet_env(FEDTUNE_ADMIN_TOKEN=ADMIN)

    done = admin(server, "federations", "list", env=env)

    assert done.returncode == 0, done.stderr


# -- failures -------------------------------------------------------------------------------


def test_a_wrong_token_gives_the_servers_detail(server, tmp_path):
    wrong = tmp_path / "wrong-token"
    wrong.write_text("fta_not-the-admin-token\n")

    line = refused(admin(server, "federations", "list", "--admin-token-file", str(wrong)))

    assert line.startswith("fedtune-server: server answered 401 unauthorized: ")


def test_a_client_key_is_not_the_admin_token(server, fid, tmp_path):
    token = admin_json(server, "enroll", fid)["token"]
    with server.http(ADMIN) as http:
        key = http.post("/v1/clients", json={"enrollment_token": token, "name": "org-k"}).json()[
            "api_key"
        ]
    key_file = tmp_path / "key"
    key_file.write_text(key)

    line = refused(admin(server, "federations", "list", "--admin-token-file", str(key_file)))

    assert "server answered 403 forbidden" in line


def test_an_unknown_federation_is_the_servers_404(server):
    line = refused(admin(server, "federations", "show", "fed_nosuchthing"))

    assert line == "fedtune-server: server answered 404 not_found: no federation 'fed_nosuchthing'"


def test_an_unreachable_server_is_one_line(server):
    stopped = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    cmd = server_command(
        "admin", "federations", "list", "--server", stopped,
        "--admin-token-file", str(server.admin_token_file),
    )  # fmt: skip

    line = refused(subprocess.run(cmd, capture_output=True, text=True, env=quiet_env()))

    assert line.startswith(f"fedtune-server: cannot reach {stopped}")


def test_a_server_certificate_of_an_unknown_ca_is_refused(server):
    cmd = server_command(
        "admin", "federations", "list", "--server", server.url,
        "--admin-token-file", str(server.admin_token_file),
    )  # fmt: skip

    line = refused(subprocess.run(cmd, capture_output=True, text=True, env=quiet_env()))

    assert "cannot reach" in line and "CERTIFICATE_VERIFY_FAILED" in line


def test_plain_http_needs_insecure_http(server):
    cmd = server_command(
        "admin", "federations", "list", "--server", "http://127.0.0.1:9",
        "--admin-token-file", str(server.admin_token_file),
    )  # fmt: skip

    line = refused(subprocess.run(cmd, capture_output=True, text=True, env=quiet_env()))

    assert "plain http" in line and "--insecure-http" in line


def test_no_token_at_all_is_refused_before_any_request(server):
    env = {k: v for k, v in quiet_env().items() if k != "FEDTUNE_ADMIN_TOKEN"}

    line = refused(admin(server, "federations", "list", env=env))

    assert "no admin token" in line


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("name: x\nmodel: [1, 2\n", "spec"),
        ('{"name": "x"}', "spec"),
    ],
    ids=["not_yaml", "missing_fields"],
)
def test_a_bad_spec_file_is_refused_and_creates_nothing(server, tmp_path, content, fragment):
    bad = tmp_path / "spec.yaml"
    bad.write_text(content)
    before = admin_json(server, "federations", "list")

    line = refused(admin(server, "federations", "create", "--spec", str(bad)))

    assert line.startswith(f"fedtune-server: --spec {bad}") and fragment in line.lower()
    assert admin_json(server, "federations", "list") == before


def test_a_missing_spec_file_is_one_line(server, tmp_path):
    line = refused(admin(server, "federations", "create", "--spec", str(tmp_path / "none.yaml")))

    assert "none.yaml" in line


def test_enroll_with_a_bad_number_of_uses_is_refused_locally(server, fid):
    line = refused(admin(server, "enroll", fid, "--uses", "0"))

    assert "uses" in line
