"""Fixtures the end-to-end tests share."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from client_sdk import FedTuneClient
from lab.local_federation import ServerProcess, register, start_client, start_server, train_args
from tests.images import write_image_folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real `fedtune-server serve` process on loopback (plain HTTP) for the module's tests;
    a module that needs other flags (TLS, limits) defines its own `server`."""
    proc = start_server(tmp_path_factory.mktemp("server"))
    yield proc
    proc.stop()


TrainOrgs = Callable[[FedTuneClient, str, Sequence[str], Sequence[str]], None]


@pytest.fixture
def train_orgs(server: ServerProcess, tmp_path: Path) -> TrainOrgs:
    """`train_orgs(admin, federation_id, orgs, classes)`: registers each organisation under
    tmp_path/<org>/credentials.json, writes it 3 synthetic images per class (seeded by its
    place in `orgs`), runs one `fedtune-client train` process each and asserts they all exit 0."""

    def run(admin: FedTuneClient, fid: str, orgs: Sequence[str], classes: Sequence[str]) -> None:
        procs = []
        for i, org in enumerate(orgs):
            creds = tmp_path / org / "credentials.json"
            register(server, admin.create_enrollment_token(fid).token, org, creds)
            data = write_image_folder(tmp_path / org / "data", classes, 3, seed=i)
            args = train_args(server, creds, data, tmp_path / org / "work")
            procs.append(start_client(org, args, tmp_path / org / "client.log"))

        codes = [p.wait(timeout=600) for p in procs]

        assert codes == [0] * len(procs), "\n".join(p.output()[-3000:] for p in procs)

    return run
