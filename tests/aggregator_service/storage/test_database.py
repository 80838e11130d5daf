"""Database URLs: what each means, and a one-line refusal for those the service cannot use."""

from __future__ import annotations

import pytest

from aggregator_service.cli import main
from aggregator_service.storage.database import parse_database_url


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://u:p@db.example/fed", "postgresql+psycopg"),
        ("postgres://u:p@db.example/fed", "postgresql+psycopg"),
        ("postgresql+psycopg://u:p@db.example/fed", "postgresql+psycopg"),
        ("sqlite:///fedtune.db", "sqlite"),
        ("sqlite+pysqlite:///fedtune.db", "sqlite+pysqlite"),
    ],
)
def test_postgresql_urls_mean_the_psycopg_driver(given: str, driver: str):
    parsed = parse_database_url(given)

    assert parsed.drivername == driver
    assert parsed.database in ("fed", "fedtune.db")


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("not a url", "expected e.g. postgresql://"),
        ("mysql://u:p@db.example/fed", "unsupported backend 'mysql'"),
        ("postgresql+psycopg2://u:p@db.example/fed", "driver 'psycopg2' is not supported"),
        ("postgresql+asyncpg://u:p@db.example/fed", "driver 'asyncpg' is not supported"),
    ],
)
def test_unusable_url_is_refused_with_a_reason(given: str, fragment: str):
    with pytest.raises(ValueError, match=fragment):
        parse_database_url(given)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("mysql://u:p@127.0.0.1/fed", "unsupported backend"),
        ("postgresql://fedtune:secret@127.0.0.1:1/fed", "cannot open the database"),
    ],
)
def test_cli_reports_a_bad_or_unreachable_database_in_one_line(tmp_path, capsys, url, fragment):
    argv = ["enroll", "--data-dir", str(tmp_path), "--database-url", url, "--federation", "f"]

    code = main(argv)

    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err
    assert "secret" not in err and "Traceback" not in err
