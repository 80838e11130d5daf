"""`fedtune-client register` takes the enrollment token from a file, stdin or the environment."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from client_sdk.cli import ENV_ENROLLMENT_TOKEN, main

TOKEN = "fte_secret_token"
REGISTERED = {
    "client_id": "cli_7h2k",
    "api_key": "ftk_key",
    "federation_id": "fed_3k9x2m",
    "name": "st-marys",
}


def _register(scripted: Any, tmp_path: Path, *extra: str) -> int:
    scripted.then(201, REGISTERED)
    argv = ["register", "--server", scripted.url, "--insecure-http", "--name", "st-marys"]
    argv += ["--credentials", str(tmp_path / "creds.json"), "--max-retries", "0", *extra]
    return main(argv)


def _sent_token(scripted: Any) -> str:
    return json.loads(scripted.seen[-1].body)["enrollment_token"]


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ENROLLMENT_TOKEN, raising=False)


def test_token_is_read_from_a_file(scripted, tmp_path, capsys):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")

    assert _register(scripted, tmp_path, "--enrollment-token-file", str(token_file)) == 0

    assert _sent_token(scripted) == TOKEN
    assert "warning" not in capsys.readouterr().err


def test_token_is_read_from_stdin(scripted, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(TOKEN + "\n"))

    assert _register(scripted, tmp_path, "--enrollment-token-file", "-") == 0

    assert _sent_token(scripted) == TOKEN
    assert "warning" not in capsys.readouterr().err


def test_token_is_read_from_the_environment(scripted, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV_ENROLLMENT_TOKEN, TOKEN)

    assert _register(scripted, tmp_path) == 0

    assert _sent_token(scripted) == TOKEN
    assert "warning" not in capsys.readouterr().err


def test_token_on_the_command_line_still_works_with_a_one_line_warning(scripted, tmp_path, capsys):
    assert _register(scripted, tmp_path, "--enrollment-token", TOKEN) == 0

    assert _sent_token(scripted) == TOKEN
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert "--enrollment-token-file" in warnings[0]
    assert TOKEN not in warnings[0]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ([], "no enrollment token"),
        (["--enrollment-token-file", "EMPTY"], "is empty"),
        (["--enrollment-token-file", "MISSING"], "MISSING"),
    ],
)
def test_a_missing_or_empty_token_is_one_line_and_exit_1(
    scripted, tmp_path, capsys, setup, message
):
    (tmp_path / "EMPTY").write_text("\n")
    args = [str(tmp_path / a) if a in ("EMPTY", "MISSING") else a for a in setup]

    assert _register(scripted, tmp_path, *args) == 1

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert scripted.seen == []
