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
from client_sdk import _constants as C
from client_sdk._base_client import BaseClient
from client_sdk.cli import ENV_RETRY_FOR, main
from client_sdk.credentials import Credentials, save
from shared.api import Health

HEALTH = {"status": "ok", "detail": {}}
UNAVAILABLE = {"error": "unavailable", "detail": "database unavailable"}


class FakeClock:
    """Time that passes only when the client sleeps: sleeps are recorded, not slept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.delays: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


class RecordingClient(FedTuneClient):
    """Records the delays it would sleep instead of sleeping them, on a fake clock."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, allow_http=True, **kwargs)
        self.time = FakeClock()
        self.delays = self.time.delays

    def _sleep(self, seconds: float) -> None:
        self.time.sleep(seconds)

    def _clock(self) -> float:
        return self.time.clock()


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
    assert all(d <= C.MAX_RETRY_DELAY_S for d in client.delays)


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


def test_retries_go_on_past_six_attempts_within_the_budget(scripted):
    for _ in range(12):
        scripted.then(503, UNAVAILABLE)
    scripted.then(200, HEALTH)
    client = RecordingClient(scripted.url)

    health = client.health()

    assert health.status == "ok" and len(scripted.seen) == 13
    assert sum(client.delays) < C.DEFAULT_RETRY_FOR_S


def test_backoff_is_capped_at_thirty_seconds(scripted):
    for _ in range(15):
        scripted.then(502, body=b"bad gateway")
    scripted.then(200, HEALTH)
    client = RecordingClient(scripted.url)

    client.health()

    assert max(client.delays) <= C.MAX_RETRY_DELAY_S
    assert min(client.delays[-4:]) >= (1 - C.RETRY_JITTER) * C.MAX_RETRY_DELAY_S


def test_the_budget_spent_ends_the_call_with_a_note_on_why(scripted):
    for _ in range(50):
        scripted.then(503, UNAVAILABLE)
    client = RecordingClient(scripted.url, retry_for_s=3)

    with pytest.raises(InternalServerError) as info:
        client.health()

    assert info.value.status == 503
    assert sum(client.delays) == pytest.approx(3.0)
    attempts = len(scripted.seen)
    assert attempts == len(client.delays) + 1
    assert info.value.__notes__ == [
        f"gave up after {attempts} attempts over 3s (retry budget spent)"
    ]


def test_a_zero_budget_never_retries(scripted):
    scripted.then(503, UNAVAILABLE)
    client = RecordingClient(scripted.url, retry_for_s=0)

    with pytest.raises(InternalServerError):
        client.health()

    assert len(scripted.seen) == 1 and client.delays == []


def test_retry_after_is_waited_even_past_the_backoff_cap(scripted):
    scripted.then(503, UNAVAILABLE, headers={"Retry-After": "120"})
    scripted.then(200, HEALTH)
    client = RecordingClient(scripted.url)

    client.health()

    assert client.delays == [120.0]


def test_retry_after_is_clipped_to_the_budget_left(scripted):
    for _ in range(3):
        scripted.then(503, UNAVAILABLE, headers={"Retry-After": "2"})
    client = RecordingClient(scripted.url, retry_for_s=3)

    with pytest.raises(InternalServerError):
        client.health()

    assert client.delays == [2.0, 1.0] and len(scripted.seen) == 3


@pytest.mark.parametrize("status", [408, 500, 503, 504, 507])
def test_transient_statuses_are_retried(scripted, status):
    scripted.then(status, {"error": "transient", "detail": "soon"}, headers={"Retry-After": "1"})
    scripted.then(200, HEALTH)
    client = RecordingClient(scripted.url)

    client.health()

    assert client.delays == [1.0] and len(scripted.seen) == 2


def test_max_retries_still_limits_the_count_within_the_budget(scripted):
    for _ in range(5):
        scripted.then(503, UNAVAILABLE)
    client = RecordingClient(scripted.url, max_retries=3)

    with pytest.raises(InternalServerError) as info:
        client.health()

    assert len(scripted.seen) == 4
    assert info.value.__notes__ == [
        f"gave up after 4 attempts over {sum(client.delays):.0f}s (retry max_retries=3)"
    ]


# -- the CLI -------------------------------------------------------------------


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Every client the CLI builds sleeps on one fake clock."""
    fake = FakeClock()
    monkeypatch.setattr(BaseClient, "_sleep", lambda _self, seconds: fake.sleep(seconds))
    monkeypatch.setattr(BaseClient, "_clock", lambda _self: fake.clock())
    monkeypatch.delenv(ENV_RETRY_FOR, raising=False)
    return fake


def _status(scripted: Any, tmp_path: Any, *extra: str) -> int:
    creds = tmp_path / "creds.json"
    save(Credentials(server=scripted.url, client_id="cli_1", api_key="ftk_k",
                     federation_id="fed_1", name="org"), creds)  # fmt: skip
    argv = ["status", "--server", scripted.url, "--insecure-http", "--credentials", str(creds)]
    return main([*argv, *extra])


def test_cli_retry_for_sets_the_budget_and_gives_up_in_one_line(
    scripted, tmp_path, fake_time, capsys
):
    for _ in range(50):
        scripted.then(503, UNAVAILABLE, headers={"Retry-After": "2"})

    assert _status(scripted, tmp_path, "--retry-for", "5") == 1

    err = capsys.readouterr().err.splitlines()
    assert fake_time.delays == [2.0, 2.0, 1.0] and len(scripted.seen) == 4
    assert "Traceback" not in "\n".join(err)
    warnings = [line for line in err if "retry budget" in line and "error:" not in line]
    assert len(warnings) == 3
    assert "retry 1 in 2.0s, 5s left of the 5s retry budget" in warnings[0]
    assert "retry 3 in 1.0s, 1s left of the 5s retry budget" in warnings[2]
    assert err[-1] == (
        "fedtune-client: error: server answered 503 unavailable: database unavailable; "
        "gave up after 4 attempts over 5s (retry budget spent)"
    )


def test_cli_retry_budget_comes_from_the_environment(
    scripted, tmp_path, fake_time, monkeypatch, capsys
):
    monkeypatch.setenv(ENV_RETRY_FOR, "2")
    for _ in range(50):
        scripted.then(507, {"error": "insufficient_storage", "detail": "disk full"})

    assert _status(scripted, tmp_path) == 1

    assert sum(fake_time.delays) == pytest.approx(2.0)
    assert "retry budget spent" in capsys.readouterr().err.splitlines()[-1]


def test_cli_refuses_a_bad_retry_budget_in_the_environment(
    scripted, tmp_path, fake_time, monkeypatch, capsys
):
    monkeypatch.setenv(ENV_RETRY_FOR, "ten minutes")

    assert _status(scripted, tmp_path) == 1

    assert capsys.readouterr().err.splitlines()[-1] == (
        f"fedtune-client: error: ${ENV_RETRY_FOR}: 'ten minutes' is not a number of seconds >= 0"
    )
    assert scripted.seen == []
