"""One organisation cannot hold a real server's long-polls and uploads without end.

A real `fedtune-server serve` with per-key limits: past them one API key is answered 429
with `Retry-After`, while other keys and the admin go on; a slot comes back as soon as its
request ends, a dropped connection included.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lab.local_federation import ServerProcess, start_server
from shared.api import FederationInfo, RoundStatus
from shared.spec import RoundsSpec, load_spec
from tests.deltas import make_delta
from tests.e2e.test_federation_e2e import EXAMPLES
from tests.e2e.test_limits import _connect

pytestmark = [pytest.mark.e2e]

POLLS = 3
UPLOADS = 2
RETRY_AFTER_S = 2


@dataclass(frozen=True)
class Federation:
    """A federation on a real server whose round 1 stays open, with enrolled clients."""

    server: ServerProcess
    info: FederationInfo
    keys: list[str]

    def status(self) -> RoundStatus:
        with self.server.http(self.keys[0]) as http:
            r = http.get(f"/v1/federations/{self.info.id}/rounds/current")
        r.raise_for_status()
        return RoundStatus.model_validate(r.json())

    def poll_path(self, wait_s: float) -> str:
        revision = self.status().revision
        return f"/v1/federations/{self.info.id}/rounds/current?wait_s={wait_s}&revision={revision}"

    def upload_path(self, rnd: int = 1) -> str:
        return f"/v1/federations/{self.info.id}/rounds/{rnd}/update"

    def delta(self, num_examples: int = 10) -> bytes:
        return make_delta(self.info, 1, self.status().global_version, num_examples)


def enrolled_federation(server: ServerProcess, clients: int) -> Federation:
    """The tiny CLIP federation with `clients` members registered over HTTP; round 1 needs
    more updates than they can send, so it stays open."""
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    rounds = RoundsSpec(total=2, quorum=clients + 1, min_updates=clients + 1, deadline_s=3600)
    admin = server.admin()
    info = admin.create_federation(spec.model_copy(update={"rounds": rounds}))
    keys = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for i in range(clients):
            token = admin.create_enrollment_token(info.id).token
            r = http.post("/v1/clients", json={"enrollment_token": token, "name": f"org-{i}"})
            r.raise_for_status()
            keys.append(r.json()["api_key"])
    return Federation(server, info, keys)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root: Path = tmp_path_factory.mktemp("client-limits")
    args = ["--max-polls-per-client", str(POLLS), "--max-uploads-per-client", str(UPLOADS)]
    server = start_server(root / "server", extra_args=args)
    try:
        yield enrolled_federation(server, 3)
    finally:
        server.stop()


def _hold(
    fed: Federation, method: str, path: str, key: str, body: bytes = b"", size: int = 0
) -> socket.socket:
    """A request left open: its head (and `body`, a first part of `size` bytes) sent."""
    sock = _connect(fed.server)
    length = f"Content-Length: {size}\r\n" if method == "PUT" else ""
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n{length}\r\n"
    sock.sendall(head.encode() + body)
    return sock


def _held(socks: list[socket.socket]) -> None:
    """Give the server a moment to take the requests up, and check none was answered."""
    time.sleep(1.0)
    for sock in socks:
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        sock.setblocking(True)


def _close(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def _until_not_busy(
    send: Callable[[], httpx.Response], limit_s: float = 5.0
) -> tuple[httpx.Response, float]:
    """`send()` until it is not refused as busy (or `limit_s` passes); and how long it took."""
    start = time.monotonic()
    while True:
        r = send()
        if r.status_code != 429 or time.monotonic() - start > limit_s:
            return r, time.monotonic() - start
        time.sleep(0.2)


def _refused(fed: Federation, reason: str) -> float:
    with fed.server.http() as http:
        text = http.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(f'fedtune_updates_refused_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def _assert_busy(r: httpx.Response, kind: str) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert r.json()["error"] == "too_many_requests"
    assert kind in r.json()["detail"]


def test_long_polls_past_the_limit_are_refused_429_and_freed_on_disconnect(fed: Federation):
    path = fed.poll_path(wait_s=30)
    socks = [_hold(fed, "GET", path, fed.keys[0]) for _ in range(POLLS)]
    try:
        _held(socks)
        with fed.server.http(fed.keys[0]) as http:
            refused = http.get(path)
            with fed.server.http(fed.keys[1]) as other:
                other_key = other.get(fed.poll_path(wait_s=0.5))
            _close(socks[:1])
            again, waited = _until_not_busy(lambda: http.get(fed.poll_path(wait_s=0.5)))
    finally:
        _close(socks)

    _assert_busy(refused, "long-polls")
    assert other_key.status_code == 200
    assert again.status_code == 200, again.text
    assert waited < 3.0  # the dropped poll gave its slot back long before its 30 s


def test_the_admin_is_not_limited(fed: Federation):
    answers: list[int] = []

    def poll() -> None:
        with fed.server.http() as http:
            answers.append(http.get(fed.poll_path(wait_s=1)).status_code)

    threads = [threading.Thread(target=poll) for _ in range(POLLS + 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert answers == [200] * (POLLS + 3)


def test_plain_status_reads_are_not_counted_as_polls(fed: Federation):
    path = fed.poll_path(wait_s=30)
    socks = [_hold(fed, "GET", path, fed.keys[2]) for _ in range(POLLS)]
    try:
        _held(socks)
        with fed.server.http(fed.keys[2]) as http:
            r = http.get(f"/v1/federations/{fed.info.id}/rounds/current")
    finally:
        _close(socks)

    assert r.status_code == 200


def test_uploads_past_the_limit_are_refused_429_counted_and_freed_on_disconnect(fed: Federation):
    body = fed.delta()
    refused_before = _refused(fed, "too_many_requests")
    socks = [
        _hold(fed, "PUT", fed.upload_path(), fed.keys[0], body[: len(body) // 2], len(body))
        for _ in range(UPLOADS)
    ]
    try:
        _held(socks)
        with fed.server.http(fed.keys[0]) as http:
            refused = http.put(fed.upload_path(), content=body)
            with fed.server.http(fed.keys[1]) as other:
                other_key = other.put(fed.upload_path(), content=fed.delta(11))
            _close(socks[:1])
            again, waited = _until_not_busy(lambda: http.put(fed.upload_path(), content=body))
    finally:
        _close(socks)

    _assert_busy(refused, "uploads")
    assert _refused(fed, "too_many_requests") == refused_before + 1
    assert other_key.status_code == 201, other_key.text
    assert again.status_code == 201, again.text
    assert waited < 3.0
    time.sleep(0.5)
    assert list((fed.server.data_dir / "blobs" / "tmp").iterdir()) == []


def test_a_refused_upload_leaves_its_slot_free(fed: Federation):
    with fed.server.http(fed.keys[2]) as http:
        answers = [
            http.put(fed.upload_path(), content=b"not tensors").status_code
            for _ in range(UPLOADS + 2)
        ]
        r = http.put(fed.upload_path(), content=fed.delta(12))

    assert answers == [400] * (UPLOADS + 2)
    assert r.status_code == 201, r.text
