"""Credentials are private (0600), never written through a planted symlink, and a missing or
broken file says what to do."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from client_sdk.credentials import (
    Credentials,
    CredentialsError,
    finish_rotation,
    load,
    pending_rotation,
    rotation_path,
    save,
)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX symlinks and modes")

CREDS = Credentials(
    server="https://agg.example",
    client_id="cli_7h2k",
    api_key="ftk_secret",
    federation_id="fed_3k9x2m",
    name="st-marys",
)


def test_saved_credentials_are_mode_0600_and_load_back(tmp_path):
    path = tmp_path / "cfg" / "credentials.json"

    save(CREDS, path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path) == CREDS


@pytest.mark.parametrize(
    ("content", "message"), [(None, "run `fedtune-client register`"), ("{not json", "not valid")]
)
def test_missing_or_malformed_credentials_explain_what_to_do(tmp_path, content, message):
    path = tmp_path / "credentials.json"
    if content is not None:
        path.write_text(content)

    with pytest.raises(CredentialsError, match=message):
        load(path)


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    target = tmp_path / "creds" / "credentials.json"
    target.parent.mkdir()
    target.symlink_to(victim)

    save(CREDS, target)

    assert victim.read_text() == "untouched"
    assert not target.is_symlink()
    assert load(target) == CREDS
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_symlinks_planted_at_temp_names_are_not_written_through(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    target = tmp_path / "creds" / "credentials.json"
    target.parent.mkdir()
    planted: list[Path] = []
    real_mkstemp = tempfile.mkstemp

    def mkstemp_after_planting(*args: object, **kwargs: object) -> tuple[int, str]:
        # An attacker who guesses the next temp name plants a symlink there first; the
        # first names mkstemp would try collide, so it must move on (O_EXCL), not follow.
        names = iter(["aaaaaaaa", "bbbbbbbb"])
        monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
        prefix, suffix = str(kwargs["prefix"]), str(kwargs["suffix"])
        link = target.parent / f"{prefix}aaaaaaaa{suffix}"
        link.symlink_to(victim)
        planted.append(link)
        return real_mkstemp(*args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_after_planting)

    save(CREDS, target)

    assert victim.read_text() == "untouched"
    assert planted and planted[0].is_symlink()
    assert load(target) == CREDS
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_pending_rotation_key_is_private_and_reused_for_the_same_api_key(tmp_path):
    path = tmp_path / "credentials.json"
    save(CREDS, path)

    first = pending_rotation(path, CREDS)
    again = pending_rotation(path, CREDS)

    assert first == again
    assert stat.S_IMODE(rotation_path(path).stat().st_mode) == 0o600
    assert CREDS.api_key not in rotation_path(path).read_text()


def test_a_pending_rotation_of_an_older_api_key_is_not_reused(tmp_path):
    path = tmp_path / "credentials.json"
    old = pending_rotation(path, CREDS)

    rotated = CREDS.model_copy(update={"api_key": "ftk_new"})

    assert pending_rotation(path, rotated) != old
    finish_rotation(path)
    assert not rotation_path(path).exists()
