"""A real server judges an upload by its safetensors header as soon as that has arrived.

A header that disagrees with the manifest is refused before the body behind it is read, a
body longer than its header declares is refused as it passes that size, and hostile JSON
in the header or in the reported metrics (nesting deep enough to exhaust the parser, NaN,
Infinity) is refused with a detail, counted, and never reaches the history.
"""

from __future__ import annotations

import json
import select
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from lab.local_federation import start_server
from shared.blobs import DeltaMetadata, encode_state
from tests.e2e.test_client_limits import Federation, enrolled_federation
from tests.e2e.test_limits import MIB, _answer, _connect, _status

pytestmark = [pytest.mark.e2e]

CLAIMED = 256 * MIB  # what the attacker says it will send


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root: Path = tmp_path_factory.mktemp("upload-header")
    server = start_server(root / "server")
    try:
        yield enrolled_federation(server, 2)
    finally:
        server.stop()


def _delta(
    fed: Federation,
    change: Callable[[dict[str, torch.Tensor]], None] | None = None,
    metrics: str | None = None,
) -> bytes:
    """A delta for round 1; `change` edits its tensors, `metrics` replaces its metrics JSON."""
    tensors = {n: torch.zeros(t.shape) for n, t in fed.info.manifest.items()}
    if change is not None:
        change(tensors)
    meta = DeltaMetadata(
        federation=fed.info.id,
        round=1,
        base_version=fed.status().global_version,
        num_examples=5,
    ).to_safetensors()
    if metrics is not None:
        meta["metrics"] = metrics
    return encode_state(tensors, meta)


def _header_of(body: bytes) -> bytes:
    (n,) = struct.unpack("<Q", body[:8])
    return body[: 8 + n]


def _stream(
    fed: Federation, key: str, prefix: bytes, total: int, declared: bool
) -> tuple[int, bytes, int]:
    """PUT `prefix` and then filler up to `total` bytes, until the server answers or hangs up.

    Returns (status, answer, body bytes sent); status 0 when it closed without an answer.
    """
    sock = _connect(fed.server)
    length = f"Content-Length: {total}" if declared else "Transfer-Encoding: chunked"
    head = (
        f"PUT {fed.upload_path()} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/octet-stream\r\n{length}\r\n\r\n"
    ).encode()

    def frame(data: bytes) -> bytes:
        return data if declared else b"%x\r\n" % len(data) + data + b"\r\n"

    filler = frame(b"x" * (64 * 1024))
    sent = 0
    try:
        sock.sendall(head + frame(prefix))
        sent = len(prefix)
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sock.sendall(filler)
            sent += 64 * 1024
        answer = _answer(sock)
    except (ConnectionResetError, BrokenPipeError):
        answer = _answer(sock)
    finally:
        sock.close()
    return _status(answer), answer, sent


def _tmp_files(fed: Federation) -> list[Path]:
    return list((fed.server.data_dir / "blobs" / "tmp").iterdir())


def _wrong_shape(tensors: dict[str, torch.Tensor]) -> None:
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(tensors[name].numel() + 1)


@pytest.mark.parametrize("declared", [True, False], ids=["content_length", "chunked"])
def test_wrong_shape_is_refused_before_the_body_is_read(fed: Federation, declared: bool):
    header = _header_of(_delta(fed, _wrong_shape))

    status, answer, sent = _stream(fed, fed.keys[0], header, CLAIMED, declared)

    assert status == 422, answer[-500:]
    assert b"has shape" in answer and b"invalid_update" in answer
    assert b"connection: close" in answer.lower()  # and nothing more is read
    assert sent < 32 * MIB, f"the server read {sent} bytes of a refused upload"
    assert _tmp_files(fed) == []


@pytest.mark.parametrize("declared", [True, False], ids=["content_length", "chunked"])
def test_body_longer_than_its_header_declares_is_refused(fed: Federation, declared: bool):
    good = _delta(fed)

    status, answer, sent = _stream(fed, fed.keys[0], good, len(good) + CLAIMED, declared)

    assert status == 413, answer[-500:]
    assert b"payload_too_large" in answer and b"longer than the %d bytes" % len(good) in answer
    assert sent < len(good) + 32 * MIB
    assert _tmp_files(fed) == []


def _raw_header(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


# name -> (body factory, status, detail fragment)
HOSTILE: dict[str, tuple[Callable[[Federation], bytes], int, str]] = {
    "header_nested_objects": (lambda f: _raw_header(b'{"a":' * 100_000), 400, "nested too deeply"),
    "header_nested_arrays": (lambda f: _raw_header(b"[" * 500_000), 400, "nested too deeply"),
    "metrics_nested": (lambda f: _delta(f, metrics="[" * 100_000), 422, "nested too deeply"),
    "metrics_nan": (lambda f: _delta(f, metrics='{"val_accuracy": NaN}'), 422, "'val_accuracy'"),
    "metrics_infinity": (
        lambda f: _delta(f, metrics='{"train_loss": Infinity}'),
        422,
        "'train_loss'",
    ),
    "metrics_minus_infinity": (lambda f: _delta(f, metrics='{"loss": -Infinity}'), 422, "'loss'"),
    "metrics_overflow": (lambda f: _delta(f, metrics='{"loss": 1e999}'), 422, "'loss'"),
    "metrics_not_flat": (
        lambda f: _delta(f, metrics='{"loss": {"a": 1}}'),
        422,
        "must be a number",
    ),
    "metrics_not_object": (lambda f: _delta(f, metrics="[1, 2]"), 422, "JSON object"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_json_is_refused_with_a_detail_not_a_500(fed: Federation, case: str):
    body, status, fragment = HOSTILE[case]

    with fed.server.http(fed.keys[1]) as http:
        r = http.put(fed.upload_path(), content=body(fed))
        history = http.get(f"/v1/federations/{fed.info.id}/rounds")

    assert r.status_code == status, r.text
    assert r.json()["error"] == "invalid_update" and fragment in r.json()["detail"]
    assert history.status_code == 200 and fed.status().received == 0
    with fed.server.http() as http:
        metrics = http.get("/metrics").text
    assert 'fedtune_updates_refused_total{reason="invalid_update"}' in metrics
    assert "Traceback" not in fed.server.log_tail(200)


def test_finite_metrics_are_accepted_and_shown(fed: Federation):
    body = _delta(fed, metrics=json.dumps({"val_accuracy": 0.5}))

    with fed.server.http(fed.keys[0]) as http:
        r = http.put(fed.upload_path(), content=body)
        history = http.get(f"/v1/federations/{fed.info.id}/rounds")

    assert r.status_code == 201, r.text
    assert history.status_code == 200
    assert history.json()[0]["metrics"] == {"val_accuracy": 0.5}
