"""Fixtures the end-to-end tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.local_federation import ServerProcess, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real `fedtune-server serve` process on loopback (plain HTTP) for the module's tests;
    a module that needs other flags (TLS, limits) defines its own `server`."""
    proc = start_server(tmp_path_factory.mktemp("server"))
    yield proc
    proc.stop()
