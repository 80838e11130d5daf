"""Settings come from FEDTUNE_* variables; explicit values win."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from aggregator_service.settings import Settings, resolve_admin_token


@pytest.mark.parametrize(
    ("var", "value", "field", "expected"),
    [
        ("FEDTUNE_MAX_UPLOAD_MB", "12.5", "max_upload_mb", 12.5),
        ("FEDTUNE_LEASE_S", "30", "lease_s", 30.0),
        (
            "FEDTUNE_DATABASE_URL",
            "postgresql+psycopg://db/fedtune",
            "database_url",
            "postgresql+psycopg://db/fedtune",
        ),
        ("FEDTUNE_DATA_DIR", "/srv/fedtune", "data_dir", Path("/srv/fedtune")),
        ("FEDTUNE_MAX_JSON_KB", "32", "max_json_bytes", 32 * 1024),
        ("FEDTUNE_MAX_HEADER_KB", "8", "max_header_bytes", 8 * 1024),
        ("FEDTUNE_HEADER_TIMEOUT_S", "2.5", "header_timeout_s", 2.5),
        ("FEDTUNE_KEEP_ALIVE_S", "3", "keep_alive_s", 3.0),
        ("FEDTUNE_SHUTDOWN_TIMEOUT_S", "5", "shutdown_timeout_s", 5),
        ("FEDTUNE_LIMIT_CONCURRENCY", "50", "limit_concurrency", 50),
        ("FEDTUNE_MAX_CONNECTIONS", "80", "max_connections", 80),
    ],
)
def test_environment_sets_each_field(monkeypatch, var, value, field, expected):
    monkeypatch.setenv(var, value)
    assert getattr(Settings(), field) == expected


def test_explicit_value_wins_over_environment(monkeypatch):
    monkeypatch.setenv("FEDTUNE_PORT", "9000")
    assert Settings(port=8123).port == 8123


def test_admin_token_is_generated_once_with_private_mode(tmp_path):
    settings = Settings(data_dir=tmp_path)

    first = resolve_admin_token(settings)
    second = resolve_admin_token(settings)

    assert first == second and first.startswith("fta_")
    assert (tmp_path / "admin-token").stat().st_mode & 0o777 == 0o600


def test_the_database_url_can_come_from_a_file(tmp_path):
    secret = tmp_path / "database-url"
    secret.write_text("postgresql+psycopg://fedtune:s3cret@db:5432/fedtune\n")

    settings = Settings(data_dir=tmp_path, database_url_file=secret)

    assert settings.sqlalchemy_url() == "postgresql+psycopg://fedtune:s3cret@db:5432/fedtune"


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_a_missing_or_empty_database_url_file_is_one_clear_error(tmp_path, content):
    secret = tmp_path / "database-url"
    if content is not None:
        secret.write_text(content)

    with pytest.raises(ValidationError, match="database_url_file"):
        Settings(data_dir=tmp_path, database_url_file=secret)


def test_the_data_directory_is_created_private(tmp_path):
    from aggregator_service.main import build_core

    build_core(Settings(data_dir=tmp_path / "data"))

    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700


LONG_A = "fta_first-admin-token-0123456789abcdef"
LONG_B = "fta_second-admin-token-0123456789abcdef"


def test_a_short_admin_token_setting_is_refused(monkeypatch):
    monkeypatch.setenv("FEDTUNE_ADMIN_TOKEN", "x" * 31)

    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings()


def test_an_admin_token_file_lists_every_valid_token_first_one_returned(tmp_path):
    (tmp_path / "admin").write_text(f"\n{LONG_A}\n  \n{LONG_B}\n")

    assert resolve_admin_token(
        Settings(data_dir=tmp_path, admin_token_file=tmp_path / "admin")
    ) == (LONG_A)


@pytest.mark.parametrize("content", ["short\n", f"{LONG_A}\nshort\n"])
def test_an_admin_token_file_with_a_short_token_is_refused(tmp_path, content):
    (tmp_path / "admin").write_text(content)

    with pytest.raises(ValueError, match="shorter than 32 characters"):
        resolve_admin_token(Settings(data_dir=tmp_path, admin_token_file=tmp_path / "admin"))


def test_admin_tokens_follow_their_file_and_ignore_a_broken_one(tmp_path):
    from aggregator_service.services.context import AdminTokens, hash_token

    path = tmp_path / "admin"
    path.write_text(LONG_A + "\n")
    tokens = AdminTokens(hash_token(LONG_A), path, recheck_s=0)

    path.write_text(f"{LONG_A}\n{LONG_B}\n")
    both = tokens.matches(hash_token(LONG_A)), tokens.matches(hash_token(LONG_B))
    path.write_text(LONG_B + "\n")
    after_removal = tokens.matches(hash_token(LONG_A)), tokens.matches(hash_token(LONG_B))
    path.write_text("short\n")
    broken = tokens.matches(hash_token(LONG_B)), tokens.matches(hash_token("short"))

    assert both == (True, True)
    assert after_removal == (False, True)
    assert broken == (True, False)


def test_admin_tokens_from_the_settings_are_fixed(tmp_path):
    from aggregator_service.services.context import AdminTokens, hash_token

    settings = Settings(data_dir=tmp_path, admin_token=LONG_A)
    (tmp_path / "admin-token").write_text(LONG_B + "\n")

    tokens = AdminTokens.from_settings(settings, hash_token(LONG_A))

    assert tokens.matches(hash_token(LONG_A)) and not tokens.matches(hash_token(LONG_B))
