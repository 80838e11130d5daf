"""What a real `fedtune-server serve` shows without credentials: `/docs` from local assets
only, `/metrics` behind the metrics or admin token on the main port and open on the
separate metrics port, `/docs` and `/openapi.json` gone with `--no-docs`."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from aggregator_service.api.routes.docs import ASSETS_DIR, ASSETS_URL
from lab.local_federation import ServerProcess, free_port, start_server

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
METRICS_TOKEN = "ftm_exposure-metrics-token"


@dataclass
class Exposed:
    server: ServerProcess
    metrics_port: int
    client_key: str

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.server.url}{path}", headers=headers, timeout=30)


def _client_key(server: ServerProcess) -> str:
    spec = yaml.safe_load((EXAMPLES / "tiny-clip-bias.yaml").read_text())
    with server.http(timeout=120) as admin:
        fid = admin.post("/v1/federations", json=spec).json()["id"]
        token = admin.post(f"/v1/federations/{fid}/enrollment-tokens", json={}).json()["token"]
        reg = admin.post("/v1/clients", json={"enrollment_token": token, "name": "exposure-org"})
    key: str = reg.json()["api_key"]
    return key


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposed]:
    root = tmp_path_factory.mktemp("exposure")
    (root / "metrics-token").write_text(METRICS_TOKEN + "\n")
    port = free_port()
    args = ["--metrics-token-file", str(root / "metrics-token"), "--metrics-port", str(port)]
    server = start_server(root / "server", extra_args=args)
    try:
        yield Exposed(server, port, _client_key(server))
    finally:
        server.stop()


def _asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_docs_page_names_no_other_host(exposed: Exposed):
    r = exposed.get("/docs")

    assert r.status_code == 200
    assert re.search(r"https?://|//[a-z0-9]", r.text, flags=re.IGNORECASE) is None, r.text
    urls = _asset_urls(r.text)
    assert len(urls) == 3
    assert all(u.startswith(ASSETS_URL + "/") for u in urls)
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "'unsafe-inline'" not in policy.split("script-src", 1)[1].split(";", 1)[0]


def test_docs_assets_are_the_vendored_files_cached_as_immutable(exposed: Exposed):
    for url in _asset_urls(exposed.get("/docs").text):
        r = exposed.get(url)

        assert r.status_code == 200, url
        assert "immutable" in r.headers["cache-control"]
        assert "max-age=31536000" in r.headers["cache-control"]
        assert r.headers["x-content-type-options"] == "nosniff"
        vendored = ASSETS_DIR / url.rsplit("/", 1)[1]
        assert hashlib.sha256(r.content).digest() == hashlib.sha256(vendored.read_bytes()).digest()


def test_docs_and_assets_stay_out_of_the_openapi_document(exposed: Exposed):
    paths = exposed.get("/openapi.json").json()["paths"]

    assert "/metrics" in paths
    assert not [p for p in paths if p.startswith(("/docs", "/static", "/redoc"))]


@pytest.mark.parametrize(
    ("path", "caller", "want"),
    [
        ("/healthz", None, 200),
        ("/readyz", None, 200),
        ("/metrics", None, 401),
        ("/metrics", "wrong", 401),
        ("/metrics", "client", 403),
        ("/metrics", "metrics", 200),
        ("/metrics", "admin", 200),
    ],
)
def test_main_port_metrics_need_the_metrics_or_admin_token(
    exposed: Exposed, path: str, caller: str | None, want: int
):
    token = {
        None: None,
        "wrong": "ftm_not-the-token",
        "client": exposed.client_key,
        "metrics": METRICS_TOKEN,
        "admin": exposed.server.admin_token,
    }[caller]

    r = exposed.get(path, token)

    assert r.status_code == want, r.text
    if want == 200 and path == "/metrics":
        assert "fedtune_rounds_aggregated_total" in r.text
    if want != 200:
        assert r.json()["error"] == {401: "unauthorized", 403: "forbidden"}[want]
        assert "metrics token" in r.json()["detail"]
    if want == 401:
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="fedtune"'


def test_metrics_port_serves_the_same_registry_without_a_token(exposed: Exposed):
    main = exposed.get("/metrics", METRICS_TOKEN).text
    r = httpx.get(f"http://127.0.0.1:{exposed.metrics_port}/metrics", timeout=10)

    def names(text: str) -> set[str]:
        return {line.split()[0] for line in text.splitlines() if not line.startswith("#")}

    assert r.status_code == 200
    assert names(r.text) == names(main)
    assert "fedtune_updates_accepted_total" in names(r.text)


def test_metrics_port_closes_with_the_server(tmp_path: Path):
    port = free_port()
    server = start_server(tmp_path / "server", extra_args=["--metrics-port", str(port)])
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200
    finally:
        server.stop()

    assert server.proc.returncode in (0, -15)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_no_docs_turns_off_docs_openapi_and_assets(tmp_path: Path):
    server = start_server(tmp_path / "server", extra_args=["--no-docs"])
    try:
        answers = {
            path: httpx.get(f"{server.url}{path}", timeout=10)
            for path in ("/docs", "/openapi.json", "/redoc", f"{ASSETS_URL}/swagger-ui.css")
        }
        healthz = httpx.get(f"{server.url}/healthz", timeout=10)
    finally:
        server.stop()

    assert healthz.status_code == 200
    for path, r in answers.items():
        assert r.status_code == 404, path
        assert r.json()["error"] == "not_found"
