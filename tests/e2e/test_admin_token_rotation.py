"""The admin token rotates without a restart (the token file lists every valid token and is
re-read when it changes), and a short operator-chosen admin token stops start-up."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from lab.local_federation import free_port, quiet_env, server_command, start_server

pytestmark = [pytest.mark.e2e]

OLD = "fta_old-admin-token-0123456789abcdef"
NEW = "fta_new-admin-token-0123456789abcdef"


def _status(url: str, token: str) -> int:
    r = httpx.get(f"{url}/v1/clients", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return r.status_code


def _eventually(url: str, token: str, status: int) -> None:
    """The file is looked at about once a second: wait a few seconds at most."""
    deadline = time.monotonic() + 10
    while _status(url, token) != status:
        assert time.monotonic() < deadline, f"{token[:8]}… never answered {status}"
        time.sleep(0.2)


def test_admin_token_rotates_through_its_file_without_a_restart(tmp_path):
    token_file = tmp_path / "admin-token"
    token_file.write_text(OLD + "\n")
    server = start_server(tmp_path / "data", admin_token_file=token_file)
    try:
        assert (_status(server.url, OLD), _status(server.url, NEW)) == (200, 401)

        token_file.write_text(f"{OLD}\n\n{NEW}\n")  # add the new token
        _eventually(server.url, NEW, 200)
        assert _status(server.url, OLD) == 200  # both valid while tools move over

        token_file.write_text(NEW + "\n")  # retire the old one
        _eventually(server.url, OLD, 401)
        assert _status(server.url, NEW) == 200
        assert server.proc.poll() is None
    finally:
        server.stop()


def test_a_broken_token_file_keeps_the_tokens_read_before(tmp_path):
    token_file = tmp_path / "admin-token"
    token_file.write_text(OLD + "\n")
    server = start_server(tmp_path / "data", admin_token_file=token_file)
    try:
        token_file.write_text("short\n")
        time.sleep(1.5)

        assert _status(server.url, OLD) == 200
        assert _status(server.url, "short") == 401
        assert "shorter than 32" in server.log_path.read_text(errors="replace")
    finally:
        server.stop()


def _serve(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = server_command(
        "serve", "--host", "127.0.0.1", "--port", str(free_port()),
        "--data-dir", str(tmp_path / "data"), *args,
    )  # fmt: skip
    return subprocess.run(
        cmd, env={**quiet_env(), **(env or {})}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("where", ["file", "environment"])
def test_a_short_admin_token_is_refused_at_start_up(tmp_path, where):
    short = "fta_too-short-admin-token"  # 25 characters
    if where == "file":
        (tmp_path / "admin").write_text(f"{'x' * 40}\n{short}\n")
        done = _serve(tmp_path, "--admin-token-file", str(tmp_path / "admin"))
    else:
        done = _serve(tmp_path, env={"FEDTUNE_ADMIN_TOKEN": short})

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("fedtune-server: ")
    assert done.stderr.count("\n") == 1 and "32 characters" in done.stderr
    assert short not in done.stderr
