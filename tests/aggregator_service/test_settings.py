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
        ("FEDTUNE_AGGREGATION_STALE_S", "30", "aggregation_stale_s", 30.0),
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
