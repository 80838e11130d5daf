"""A real `fedtune-server serve` refuses what would cost it memory or connections:
oversized JSON bodies (without buffering them), oversized headers, bodies behind a bad
token (before reading them) and connections that never finish their headers."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from lab.local_federation import ServerProcess, start_server

HEADER_TIMEOUT_S = 1.5
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("limits")
    args = ["--header-timeout-s", str(HEADER_TIMEOUT_S), "--max-json-kb", "64"]
    srv = start_server(root / "server", extra_args=args)
    try:
        yield srv
    finally:
        srv.stop()


def _connect(server: ServerProcess) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _rss_mib(server: ServerProcess) -> float:
    return float(psutil.Process(server.proc.pid).memory_info().rss) / MIB


def _status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0


def _stream(server: ServerProcess, head: str, total: int, chunked: bool) -> tuple[int, int]:
    """Send `head`, then up to `total` body bytes until the server answers or hangs up.
    Returns (status, bytes sent); status 0 when the connection closed without an answer."""
    sock = _connect(server)
    chunk = b"x" * (64 * 1024)
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n" if chunked else chunk
    sent = 0
    try:
        sock.sendall(head.encode())
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sock.sendall(frame)
            sent += len(chunk)
        return _status(_answer(sock)), sent
    except (ConnectionResetError, BrokenPipeError):
        return _status(_answer(sock)), sent  # the answer may have come before the reset
    finally:
        sock.close()


def _answer(sock: socket.socket) -> bytes:
    """What the server sent, up to its close (b"" when reset before anything came)."""
    sock.settimeout(10)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def _post_head(path: str, size: int | None, token: str | None = None) -> str:
    length = f"Content-Length: {size}" if size is not None else "Transfer-Encoding: chunked"
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"{auth}{length}\r\n\r\n"
    )


def test_oversized_json_bodies_are_refused_without_being_buffered(server: ServerProcess) -> None:
    before = _rss_mib(server)
    statuses = []
    for size_mib, declared in ((128, True), (128, False), (64, False), (32, False), (16, True)):
        size = size_mib * MIB
        head = _post_head("/v1/clients", size if declared else None)
        status, _sent = _stream(server, head, size, chunked=not declared)
        statuses.append(status)
    growth = _rss_mib(server) - before
    print(f"RSS {before:.1f} MiB, growth after 5 oversized bodies: {growth:.2f} MiB")
    assert statuses == [413] * 5
    assert growth < 4


def test_too_large_answer_is_an_error_body(server: ServerProcess) -> None:
    with server.http() as http:
        r = http.post("/v1/clients", content=b"{" + b" " * (70 * 1024) + b"}")
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"
    assert "65536" in r.json()["detail"]


def test_small_json_body_still_reaches_the_route(server: ServerProcess) -> None:
    with server.http() as http:
        r = http.post("/v1/clients", json={"enrollment_token": "fte_unknown", "name": "a"})
    assert r.status_code == 401


def test_bad_token_is_refused_before_the_body_is_read(server: ServerProcess) -> None:
    head = _post_head("/v1/federations", 128 * MIB, token="ftk_wrong")
    sock = _connect(server)
    try:
        sock.sendall(head.encode())  # and not one body byte
        answer = _answer(sock)
    finally:
        sock.close()
    assert _status(answer) == 401
    assert b"unknown token" in answer


def test_missing_token_with_big_body_is_refused_401(server: ServerProcess) -> None:
    head = _post_head("/v1/federations/f/enrollment-tokens", None)
    status, sent = _stream(server, head, 64 * MIB, chunked=True)
    assert status == 401
    assert sent < 64 * MIB


def test_oversized_header_is_refused(server: ServerProcess) -> None:
    before = _rss_mib(server)
    head = "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: "
    status, _sent = _stream(server, head, 32 * MIB, chunked=False)
    assert status in (431, 0)  # 431, or the connection closed: never served
    assert _rss_mib(server) - before < 4
    with server.http() as http:
        r = http.get("/healthz", headers={"X-Big": "y" * (32 * 1024)})
    assert r.status_code == 431


def test_partial_header_connections_are_closed_within_the_header_timeout(
    server: ServerProcess,
) -> None:
    socks = [_connect(server) for _ in range(30)]
    start = time.monotonic()
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")
    closed = 0
    deadline = start + HEADER_TIMEOUT_S + 3
    for sock in socks:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            closed += sock.recv(1) == b""
        sock.close()
    assert closed == 30
    assert time.monotonic() - start < HEADER_TIMEOUT_S + 3


def test_silent_connection_is_closed_within_the_header_timeout(server: ServerProcess) -> None:
    sock = _connect(server)
    sock.settimeout(HEADER_TIMEOUT_S + 3)
    try:
        assert sock.recv(1) == b""
    finally:
        sock.close()
