"""Fixtures the end-to-end tests share."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from client_sdk import FedTuneClient
from lab.local_federation import (
    ClientProcess,
    ServerProcess,
    register,
    start_client,
    start_server,
    train_args,
)
from tests.images import write_image_folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real `fedtune-server serve` process on loopback (plain HTTP) for the module's tests;
    a module that needs other flags (TLS, limits) defines its own `server`."""
    proc = start_server(tmp_path_factory.mktemp("server"))
    yield proc
    proc.stop()


class TrainOrgs(Protocol):
    def __call__(
        self,
        admin: FedTuneClient,
        fid: str,
        orgs: Sequence[str],
        classes: Sequence[str],
        per_class: int = 3,
        extra: Mapping[str, Sequence[str]] = {},
    ) -> dict[str, tuple[Path, ClientProcess]]: ...


@pytest.fixture
def train_orgs(server: ServerProcess, tmp_path: Path) -> TrainOrgs:
    """`train_orgs(admin, federation_id, orgs, classes, per_class=3, extra={})`: registers
    each organisation under tmp_path/<org>/credentials.json, writes it `per_class` synthetic
    images per class (seeded by its place in `orgs`), runs one `fedtune-client train` process
    each (with `extra[org]` appended to its arguments), asserts they all exit 0 and returns
    org -> (credentials path, client process)."""

    def run(
        admin: FedTuneClient,
        fid: str,
        orgs: Sequence[str],
        classes: Sequence[str],
        per_class: int = 3,
        extra: Mapping[str, Sequence[str]] = {},
    ) -> dict[str, tuple[Path, ClientProcess]]:
        started: dict[str, tuple[Path, ClientProcess]] = {}
        for i, org in enumerate(orgs):
            creds = tmp_path / org / "credentials.json"
            register(server, admin.create_enrollment_token(fid).token, org, creds)
            data = write_image_folder(tmp_path / org / "data", classes, per_class, seed=i)
            args = [*train_args(server, creds, data, tmp_path / org / "work"), *extra.get(org, ())]
            started[org] = (creds, start_client(org, args, tmp_path / org / "client.log"))
        procs = [p for _, p in started.values()]

        codes = [p.wait(timeout=600) for p in procs]

        assert codes == [0] * len(procs), "\n".join(p.output()[-3000:] for p in procs)
        return started

    return run
