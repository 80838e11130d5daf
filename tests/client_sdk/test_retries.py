"""Retry policy against a real local HTTP server that answers as scripted."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import pytest

from client_sdk import (
    APIConnectionError,
    AuthenticationError,
    ConflictError,
    FedTuneClient,
    InternalServerError,
    NotFoundError,
    RateLimitError,
)
from shared.api import Health

HEALTH = {"status": "ok", "detail": {}}


class RecordingClient(FedTuneClient):
    """Records the delays it would sleep instead of sleeping them."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, allow_http=True, **kwargs)
        self.delays: list[float] = []

    def _sleep(self, seconds: float) -> None:
        self.delays.append(seconds)


def test_503_with_retry_after_seconds_is_retried_after_that_delay(scripted):
    scripted.then(503, {"error": "unavailable", "detail": "busy"}, headers={"Retry-After": "2"})
    scripted.then(200, HEALTH)
    client = RecordingClient(scripted.url)

    health = client.health()

    assert isinstance(health, Health) and health.status == "ok"
    assert client.delays == [2.0]
    assert len(scripted.seen) == 2


def test_retry_after_as_http_date_is_honoured(scripted):
    when = email.utils.formatdate(time.time() + 5, usegmt=True)
    scripted.then(
        429, {"error": "rate_limited", "detail": "slow down"}, headers={"Retry-After": when}
    )
    scripted.then(200, HEALTH)
    client = RecordingClient(scripted.url)

    client.health()

    assert len(client.delays) == 1 and 3.0 <= client.delays[0] <= 5.0


def test_without_retry_after_backoff_grows_and_is_capped_with_jitter(scripted):
    for _ in range(7):
        scripted.then(502, body=b"bad gateway")
    client = RecordingClient(scripted.url, max_retries=6)

    with pytest.raises(InternalServerError) as info:
        client.health()

    assert info.value.status == 502 and info.value.code == "http_502"
    assert len(scripted.seen) == 7
    assert all(0.75 * 0.5 * 2**n <= d <= 0.5 * 2**n for n, d in enumerate(client.delays[:4]))
    assert all(d <= 10.0 for d in client.delays)


@pytest.mark.parametrize(
    ("status", "error", "exc_type"),
    [
        (404, "not_found", NotFoundError),
        (409, "round_closed", ConflictError),
        (401, "unauthorized", AuthenticationError),
    ],
)
def test_client_errors_are_not_retried_and_carry_the_error_body(scripted, status, error, exc_type):
    scripted.then(status, {"error": error, "detail": "what to do", "round": None})
    client = RecordingClient(scripted.url)

    with pytest.raises(exc_type) as info:
        client.health()

    assert (info.value.status, info.value.code, info.value.detail) == (status, error, "what to do")
    assert len(scripted.seen) == 1 and client.delays == []


def test_429_is_retried_and_reuses_one_idempotency_key(scripted):
    scripted.then(429, {"error": "rate_limited", "detail": "later"})
    scripted.then(429, {"error": "rate_limited", "detail": "later"})
    scripted.then(200, HEALTH)
    client = RecordingClient(scripted.url)

    client.health()

    keys = {s.headers["Idempotency-Key"] for s in scripted.seen}
    assert len(scripted.seen) == 3 and len(keys) == 1


def test_rate_limit_error_surfaces_when_retries_run_out(scripted):
    scripted.then(429, {"error": "rate_limited", "detail": "later"})
    client = RecordingClient(scripted.url, max_retries=0)

    with pytest.raises(RateLimitError):
        client.health()


def test_connection_refused_is_retried_then_raises_connection_error(scripted):
    url = scripted.url
    scripted.close()
    client = RecordingClient(url, max_retries=2)

    with pytest.raises(APIConnectionError, match="cannot reach"):
        client.health()

    assert len(client.delays) == 2


def test_upload_retry_sends_the_same_bytes(scripted, tmp_path):
    delta = tmp_path / "round-1.delta.safetensors"
    delta.write_bytes(b"\x00\x01delta-bytes" * 1000)
    receipt = {
        "federation_id": "fed_1",
        "round": 1,
        "client_id": "cli_1",
        "sha256": "ab" * 32,
        "bytes": 13000,
        "num_examples": 5,
        "duplicate": False,
        "received": 1,
        "quorum": 3,
        "round_status": "open",
    }
    scripted.then(
        503, {"error": "unavailable", "detail": "restarting"}, headers={"Retry-After": "0"}
    )
    scripted.then(201, receipt)
    client = RecordingClient(scripted.url)

    result = client.upload_update("fed_1", 1, delta)

    assert result.round == 1 and not result.duplicate
    assert [s.body for s in scripted.seen] == [delta.read_bytes()] * 2
    assert scripted.seen[0].path == "/v1/federations/fed_1/rounds/1/update"


def test_429_too_many_requests_is_retried_after_its_retry_after(scripted):
    scripted.then(
        429, {"error": "too_many_requests", "detail": "busy"}, headers={"Retry-After": "2"}
    )
    scripted.then(200, HEALTH)
    client = RecordingClient(scripted.url)

    client.health()

    assert client.delays == [2.0] and len(scripted.seen) == 2


def test_409_idempotency_key_in_use_is_retried_with_the_same_key(scripted):
    scripted.then(409, {"error": "idempotency_key_in_use", "detail": "still running"})
    scripted.then(200, HEALTH)
    client = RecordingClient(scripted.url)

    client.health()

    keys = {s.headers["Idempotency-Key"] for s in scripted.seen}
    assert len(scripted.seen) == 2 and len(keys) == 1
    assert len(client.delays) == 1 and 0 < client.delays[0] <= 0.5


def test_409_idempotency_key_reused_is_not_retried(scripted):
    scripted.then(409, {"error": "idempotency_key_reused", "detail": "new key please"})
    client = RecordingClient(scripted.url)

    with pytest.raises(ConflictError):
        client.health()

    assert len(scripted.seen) == 1 and client.delays == []
