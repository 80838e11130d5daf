"""A real `fedtune-server serve` process over HTTPS completes a round."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trustme
import yaml

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, ca: ssl.SSLContext, proc: subprocess.Popen[bytes]) -> None:
    until = time.monotonic() + 120
    while time.monotonic() < until:
        assert proc.poll() is None, "server exited early"
        try:
            if httpx.get(f"{url}/readyz", verify=ca, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("server never became ready")


def test_serve_with_tls_completes_a_round_over_https(tmp_path, delta):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "admin").write_text("fta_tls-admin\n")
    port = _free_port()
    server = Path(sys.executable).with_name("fedtune-server")
    cmd = [str(server), "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--data-dir", str(tmp_path / "data"), "--admin-token-file", str(tmp_path / "admin")]
    cmd += ["--ssl-certfile", str(tmp_path / "server.pem")]
    cmd += ["--ssl-keyfile", str(tmp_path / "server.pem")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"https://127.0.0.1:{port}"
    ca_file = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    try:
        _wait_ready(url, ca_file, proc)
        spec = yaml.safe_load((EXAMPLES / "tiny-clip-bias.yaml").read_text())
        spec["rounds"] = {"total": 1, "quorum": 1, "min_updates": 1, "deadline_s": 600}
        admin = httpx.Client(
            base_url=url,
            verify=ca_file,
            headers={"Authorization": "Bearer fta_tls-admin"},
            timeout=120,
        )
        from shared.api import FederationInfo

        info = FederationInfo.model_validate(admin.post("/v1/federations", json=spec).json())
        token = admin.post(f"/v1/federations/{info.id}/enrollment-tokens", json={}).json()
        reg = httpx.post(
            f"{url}/v1/clients",
            json={"enrollment_token": token["token"], "name": "tls-org"},
            verify=ca_file,
            timeout=30,
        ).json()
        client = httpx.Client(
            base_url=url,
            verify=ca_file,
            headers={"Authorization": f"Bearer {reg['api_key']}"},
            timeout=60,
        )
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
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it
    assert proc.returncode in (0, -15), err.decode()[-2000:]
    assert b"Traceback" not in err
