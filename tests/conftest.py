"""Test-wide settings (never reach a model hub), a TLS certificate for 127.0.0.1, and fresh
PostgreSQL databases (skipped unless FEDTUNE_TEST_POSTGRES_URL names a server)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from sqlalchemy import URL

from aggregator_service.storage.database import parse_database_url
from tests.pgserver import PG_ENV, fresh_database

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(server cert chain, server key, CA cert) from a trustme CA, for 127.0.0.1."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    issued.private_key_pem.write_to_path(str(d / "key.pem"))
    with (d / "cert.pem").open("wb") as f:
        for blob in issued.cert_chain_pems:
            f.write(blob.bytes())
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return d / "cert.pem", d / "key.pem", d / "ca.pem"


@pytest.fixture(scope="session")
def pg_server() -> URL:
    """The PostgreSQL server the tests may create databases on."""
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(
            f"PostgreSQL tests are off: set {PG_ENV} to a server URL whose role may create "
            "databases, e.g. postgresql+psycopg://fedtune:fedtune@127.0.0.1:5432/postgres"
        )
    return parse_database_url(url)


@pytest.fixture
def pg_url(pg_server: URL) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped after the test."""
    with fresh_database(pg_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """The test runs twice: None (the data directory's SQLite), then a fresh PostgreSQL database."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return url
    return None
