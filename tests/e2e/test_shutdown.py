"""SIGTERM: held long-polls answer at once, and a request still running after
`--shutdown-timeout-s` is cut off; neither holds the server."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from client_sdk.credentials import load
from lab.local_federation import ServerProcess, register, start_server
from shared.api import FederationInfo
from shared.spec import RoundsSpec, load_spec
from tests.e2e.test_federation_e2e import EXAMPLES

pytestmark = [pytest.mark.e2e]


def _open_federation(server: ServerProcess) -> FederationInfo:
    """A federation whose first round stays open (it needs two updates)."""
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    rounds = RoundsSpec(total=1, quorum=2, min_updates=2, deadline_s=600)
    return server.admin().create_federation(spec.model_copy(update={"rounds": rounds}))


def _terminate(server: ServerProcess) -> int:
    server.proc.send_signal(signal.SIGTERM)
    return server.proc.wait(timeout=20)  # before any of the waits below would have ended


def test_a_held_long_poll_answers_at_once_and_the_server_exits(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server")  # the default 30 s shutdown window
    answers: list[object] = []
    try:
        info = _open_federation(server)
        revision = server.admin().current_round(info.id).revision

        def poll() -> None:  # would wait a minute for a change that does not come
            try:
                with server.http(timeout=120) as admin:
                    answers.append(
                        admin.get(
                            f"/v1/federations/{info.id}/rounds/current",
                            params={"wait_s": 60, "revision": revision},
                        )
                    )
            except httpx.HTTPError as exc:
                answers.append(exc)

        waiter = threading.Thread(target=poll)
        waiter.start()
        time.sleep(2)  # the poll is waiting
        code = _terminate(server)
        waiter.join(timeout=20)
    finally:
        server.stop()

    assert code in (0, -signal.SIGTERM), server.log_tail()
    assert len(answers) == 1 and isinstance(answers[0], httpx.Response), answers
    answered = answers[0].json()
    assert answers[0].status_code == 200
    assert (answered["round"], answered["revision"]) == (1, revision)  # as it stood


def test_an_upload_still_running_is_cut_off_at_the_shutdown_timeout(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", extra_args=["--shutdown-timeout-s", "1"])
    try:
        info = _open_federation(server)
        creds = tmp_path / "credentials.json"
        register(server, server.admin().create_enrollment_token(info.id).token, "org", creds)
        url = urlsplit(server.url)
        with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
            # Headers of a 1 MB upload, then silence: the server waits for the body (it would
            # drop the upload only after 30 s idle).
            conn.sendall(
                f"PUT /v1/federations/{info.id}/rounds/1/update HTTP/1.1\r\n"
                f"Host: {url.netloc}\r\nAuthorization: Bearer {load(creds).api_key}\r\n"
                "Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n".encode()
            )
            time.sleep(2)  # the upload is running
            code = _terminate(server)
    finally:
        server.stop()

    assert code in (0, -signal.SIGTERM), server.log_tail()
