"""Real aggregator apps on 127.0.0.1: `create_app(settings)` served by uvicorn in a thread.

`start_app` starts one per call on a free port; `federation` creates a tiny CLIP
federation over HTTP with registered clients; `delta` is `make_delta`, the
safetensors bytes a client would upload.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
import yaml

from aggregator_service.main import create_app
from aggregator_service.services import runner
from aggregator_service.services.context import Core
from aggregator_service.settings import Settings
from shared.api import FederationInfo
from tests.deltas import make_delta

ADMIN_TOKEN = "fta_test-admin-token-0123456789abcdef"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class LiveApp:
    """One app served by uvicorn in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]})
        self.thread.daemon = True
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)

    @property
    def core(self) -> Core:
        core: Core = self.app.state.core
        return core

    def client(self, token: str | None = ADMIN_TOKEN, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def tiny_spec(**rounds: Any) -> dict[str, Any]:
    """The tiny CLIP bias example with the given `rounds` overrides."""
    spec: dict[str, Any] = yaml.safe_load((EXAMPLES / "tiny-clip-bias.yaml").read_text())
    spec["rounds"] = {**spec["rounds"], **rounds}
    return spec


@dataclass
class Federation:
    app: LiveApp
    info: FederationInfo
    keys: dict[str, str] = field(default_factory=dict)  # client id -> api key

    @property
    def id(self) -> str:
        return self.info.id

    def as_client(self, cid: str) -> httpx.Client:
        return self.app.client(self.keys[cid])

    def status(self) -> dict[str, Any]:
        with self.app.client() as c:
            r = c.get(f"/v1/federations/{self.id}/rounds/current")
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def upload(self, cid: str, rnd: int, body: bytes) -> httpx.Response:
        with self.as_client(cid) as c:
            return c.put(
                f"/v1/federations/{self.id}/rounds/{rnd}/update",
                content=body,
                headers={"Content-Type": "application/octet-stream"},
            )

    def history(self) -> list[dict[str, Any]]:
        """The federation's round records, as the admin reads them."""
        with self.app.client() as c:
            r = c.get(f"/v1/federations/{self.id}/rounds")
        r.raise_for_status()
        rows: list[dict[str, Any]] = r.json()
        return rows

    def state(self, version: str | int | None = None) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        params = {} if version is None else {"version": str(version)}
        with self.app.client() as c:
            r = c.get(f"/v1/federations/{self.id}/state", params=params)
        r.raise_for_status()
        return load(r.content)

    def wait_round(self, number: int, timeout: float = 60) -> dict[str, Any]:
        """Long-poll until the current round is `number` (or the federation completes)."""
        until = time.monotonic() + timeout
        status = self.status()
        with self.app.client() as c:
            while status["federation_status"] != "completed" and (
                status["round"] < number or status["status"] != "open"
            ):
                assert time.monotonic() < until, f"round {number} never opened: {status}"
                r = c.get(
                    f"/v1/federations/{self.id}/rounds/current",
                    params={"wait_s": 5, "revision": status["revision"]},
                )
                status = r.json()
        return status


@pytest.fixture
def before_aggregation() -> Iterator[list[Callable[[str, int], None]]]:
    """The runner's fault-injection hooks: what a test appends runs in each aggregation thread
    before the round is aggregated, and is removed after the test."""
    saved = list(runner.before_aggregation)
    yield runner.before_aggregation
    runner.before_aggregation[:] = saved


@pytest.fixture(scope="session")
def delta() -> Callable[..., bytes]:
    """`tests.deltas.make_delta` as a fixture."""
    return make_delta


class AppPool:
    """Starts apps on one data directory by default; stops them all at the end."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.apps: list[LiveApp] = []

    def __call__(self, **overrides: Any) -> LiveApp:
        values: dict[str, Any] = {
            "data_dir": self.data_dir,
            "admin_token": ADMIN_TOKEN,
            "deadline_check_s": 0.1,
            **overrides,
        }
        app = LiveApp(Settings(**values))
        self.apps.append(app)
        return app

    def stop_all(self) -> None:
        for app in self.apps:
            app.stop()


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[AppPool]:
    """`start_app(**settings)` starts an app on `tmp_path/data` (or `data_dir=`)."""
    pool = AppPool(tmp_path / "data")
    yield pool
    pool.stop_all()


@pytest.fixture(scope="module")
def start_module_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppPool]:
    """Like `start_app`, shared by a whole test module."""
    pool = AppPool(tmp_path_factory.mktemp("data"))
    yield pool
    pool.stop_all()


def create_federation(app: LiveApp, spec: dict[str, Any], clients: int) -> Federation:
    """POST the spec as admin and register `clients` clients through one enrollment token."""
    with app.client() as c:
        r = c.post("/v1/federations", json=spec)
        assert r.status_code == 201, r.text
        fed = Federation(app, FederationInfo.model_validate(r.json()))
        r = c.post(f"/v1/federations/{fed.id}/enrollment-tokens", json={"uses": max(clients, 1)})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
    with app.client(None) as anon:
        for i in range(clients):
            r = anon.post("/v1/clients", json={"enrollment_token": token, "name": f"org-{i}"})
            assert r.status_code == 201, r.text
            fed.keys[r.json()["client_id"]] = r.json()["api_key"]
    return fed


@pytest.fixture
def federation(start_app: AppPool) -> Callable[..., Federation]:
    """Factory: `federation(clients=3, quorum=3, ...)` on a fresh app (or `app=`)."""

    def make(clients: int = 3, app: LiveApp | None = None, **rounds: Any) -> Federation:
        return create_federation(app or start_app(), tiny_spec(**rounds), clients)

    return make


@pytest.fixture(scope="session")
def new_federation() -> Callable[..., Federation]:
    """`create_federation(app, spec, clients)` as a fixture."""
    return create_federation


@pytest.fixture(scope="session")
def spec_with() -> Callable[..., dict[str, Any]]:
    """`tiny_spec(**rounds)` as a fixture."""
    return tiny_spec
