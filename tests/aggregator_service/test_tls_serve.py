"""A real `fedtune-server serve` process over HTTPS completes a round; plain HTTP is served
on loopback only, unless the operator says a TLS-terminating proxy is in front."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from lab.local_federation import free_port, quiet_env, server_command, start_server
from shared.api import FederationInfo

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PLAIN_HTTP_WARNING = "WARNING fedtune.server: serving plain HTTP on 0.0.0.0"


def test_serve_with_tls_completes_a_round_over_https(tmp_path, tls, delta):
    (tmp_path / "admin").write_text("fta_tls-admin-token-0123456789abcdef\n")
    server = start_server(tmp_path / "data", tls=tls, admin_token_file=tmp_path / "admin")
    url = server.url
    ca_file = ssl.create_default_context(cafile=str(tls[2]))
    try:
        assert url.startswith("https://")
        spec = yaml.safe_load((EXAMPLES / "tiny-clip-bias.yaml").read_text())
        spec["rounds"] = {"total": 1, "quorum": 1, "min_updates": 1, "deadline_s": 600}
        # clients are closed before the stop: an idle TLS keep-alive connection would hold
        # the graceful shutdown until asyncio's SSL shutdown timeout
        with server.http(timeout=120) as admin:
            info = FederationInfo.model_validate(admin.post("/v1/federations", json=spec).json())
            token = admin.post(f"/v1/federations/{info.id}/enrollment-tokens", json={}).json()
        reg = httpx.post(
            f"{url}/v1/clients",
            json={"enrollment_token": token["token"], "name": "tls-org"},
            verify=ca_file,
            timeout=30,
        ).json()
        with server.http(reg["api_key"]) as client:
            body = delta(info, 1, info.global_version)
            put = client.put(f"/v1/federations/{info.id}/rounds/1/update", content=body)
            status = client.get(f"/v1/federations/{info.id}/rounds/current").json()
            while status["federation_status"] != "completed":
                status = client.get(
                    f"/v1/federations/{info.id}/rounds/current",
                    params={"wait_s": 10, "revision": status["revision"]},
                ).json()
            final = client.get(f"/v1/federations/{info.id}/state")

        assert put.status_code == 201
        assert final.headers["etag"] == f'"{status["global_version"]}"'
        with pytest.raises(httpx.ConnectError):  # a client without the CA refuses the server
            httpx.get(f"{url}/healthz", timeout=5)
    finally:
        server.stop()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it
    log = server.log_path.read_text(errors="replace")
    assert server.proc.returncode in (0, -15), log[-2000:]
    assert "Traceback" not in log


def test_serve_refuses_plain_http_on_all_addresses(tmp_path):
    cmd = server_command(
        "serve", "--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(tmp_path / "d")
    )

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=quiet_env())

    assert proc.returncode == 2
    assert proc.stderr.startswith("fedtune-server: refusing plain HTTP on 0.0.0.0")
    assert proc.stderr.count("\n") == 1 and "--insecure-http" in proc.stderr
    assert not (tmp_path / "d").exists()


def test_insecure_http_serves_on_all_addresses_with_a_warning(tmp_path):
    args = ["--host", "0.0.0.0", "--insecure-http"]  # the later --host wins
    server = start_server(tmp_path / "data", extra_args=args)
    try:
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
    finally:
        server.stop()

    log = server.log_path.read_text(errors="replace")
    assert ready.status_code == 200
    assert PLAIN_HTTP_WARNING in log
    assert "TLS-terminating proxy" in log


def test_tls_on_all_addresses_serves_without_the_warning(tmp_path, tls):
    server = start_server(tmp_path / "data", tls=tls, extra_args=["--host", "0.0.0.0"])
    try:
        ready = httpx.get(f"{server.url}/readyz", timeout=10, verify=str(tls[2]))
    finally:
        server.stop()

    log = server.log_path.read_text(errors="replace")
    assert ready.status_code == 200
    assert "plain HTTP" not in log
