"""Idempotency-Key over real HTTP: a retried POST gets its first answer and creates nothing new."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from aggregator_service.storage.tables import (
    clients,
    enrollment_tokens,
    federations,
    idempotency_keys,
)
from client_sdk import FedTuneClient
from tests.aggregator_service.db_faults import refusing_writes


@pytest.fixture(scope="module")
def app(start_module_app):
    return start_module_app()


@pytest.fixture(scope="module")
def fed(app, new_federation, spec_with):
    return new_federation(app, spec_with(), 0)


def _count(app, table) -> int:
    with app.core.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _token(fed, uses: int = 5) -> str:
    with fed.app.client() as admin:
        r = admin.post(f"/v1/federations/{fed.id}/enrollment-tokens", json={"uses": uses})
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def _register(fed, token: str, key: str | None, name: str = "org") -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    with fed.app.client(None) as anon:
        return anon.post(
            "/v1/clients", json={"enrollment_token": token, "name": name}, headers=headers
        )


def test_retried_registration_replays_the_same_client_and_api_key(fed):
    token = _token(fed, uses=2)
    before = _count(fed.app, clients)

    first = _register(fed, token, "reg-1")
    again = _register(fed, token, "reg-1")

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert _count(fed.app, clients) == before + 1
    with fed.app.client(again.json()["api_key"]) as c:
        assert c.get(f"/v1/federations/{fed.id}").status_code == 200
    assert _register(fed, token, "reg-1b").status_code == 201  # the replay spent no use
    assert _register(fed, token, "reg-1c").status_code == 403


def test_same_key_with_a_different_body_is_refused_and_creates_nothing(fed):
    token = _token(fed)
    assert _register(fed, token, "reg-2", name="org-a").status_code == 201
    before = _count(fed.app, clients)

    other = _register(fed, token, "reg-2", name="org-b")

    assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused"
    assert "different request" in other.json()["detail"]
    assert _count(fed.app, clients) == before


def test_the_same_key_from_another_caller_is_independent(fed):
    first = _register(fed, _token(fed), "reg-3", name="org")
    second = _register(fed, _token(fed), "reg-3", name="org")

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["client_id"] != second.json()["client_id"]
    assert "Idempotent-Replayed" not in second.headers


def test_without_a_key_each_registration_is_new(fed):
    token = _token(fed)

    answers = [_register(fed, token, None) for _ in range(2)]

    assert [a.status_code for a in answers] == [201, 201]
    assert answers[0].json()["client_id"] != answers[1].json()["client_id"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/federations", "spec"),
        ("/v1/federations/{fid}/enrollment-tokens", {"uses": 2, "expires_in_s": 3600}),
    ],
    ids=["create_federation", "enrollment_token"],
)
def test_admin_posts_are_replayed_once_per_key(fed, spec_with, path, body):
    url, payload = path.format(fid=fed.id), spec_with() if body == "spec" else body
    with fed.app.client() as admin:
        first = admin.post(url, json=payload, headers={"Idempotency-Key": f"admin-{url}"})
        again = admin.post(url, json=payload, headers={"Idempotency-Key": f"admin-{url}"})
        fresh = admin.post(url, json=payload, headers={"Idempotency-Key": f"admin-{url}-2"})

    assert [r.status_code for r in (first, again, fresh)] == [201, 201, 201]
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert fresh.json() != first.json()


def test_a_replayed_federation_is_not_created_twice(fed, spec_with):
    before = _count(fed.app, federations)
    with fed.app.client() as admin:
        ids = {
            admin.post(
                "/v1/federations", json=spec_with(), headers={"Idempotency-Key": "one-fed"}
            ).json()["id"]
            for _ in range(3)
        }

    assert len(ids) == 1 and _count(fed.app, federations) == before + 1


def test_stored_answers_hold_no_usable_secret(fed):
    token = _token(fed)
    with fed.app.client() as admin:
        issued = admin.post(
            f"/v1/federations/{fed.id}/enrollment-tokens",
            json={"uses": 1},
            headers={"Idempotency-Key": "secret-check"},
        ).json()["token"]
    api_key = _register(fed, token, "secret-check").json()["api_key"]

    with fed.app.core.db.read() as conn:
        stored = " ".join(conn.execute(select(idempotency_keys.c.answer)).scalars())

    assert issued not in stored and api_key not in stored
    assert issued[4:] not in stored and api_key[4:] not in stored


def test_a_request_whose_answer_cannot_be_stored_issues_nothing_and_its_retry_runs_at_once(fed):
    url, key = f"/v1/federations/{fed.id}/enrollment-tokens", {"Idempotency-Key": "lost-answer"}
    before = _count(fed.app, enrollment_tokens)
    with fed.app.client() as admin:
        with refusing_writes(fed.app.core.db, "idempotency_keys", "answer"):
            failed = admin.post(url, json={"uses": 1}, headers=key)
        issued_after_failure = _count(fed.app, enrollment_tokens)
        retried = admin.post(url, json={"uses": 1}, headers=key)
        replayed = admin.post(url, json={"uses": 1}, headers=key)

    assert failed.status_code == 503 and failed.json()["error"] == "database_unavailable"
    assert issued_after_failure == before
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers
    assert replayed.json() == retried.json() and replayed.headers["Idempotent-Replayed"] == "true"
    assert _count(fed.app, enrollment_tokens) == before + 1


def test_a_key_longer_than_255_characters_is_refused(fed):
    answer = _register(fed, _token(fed), "k" * 256)

    assert answer.status_code == 422 and answer.json()["error"] == "validation_error"


class _LoseFirstAnswer(httpx.HTTPTransport):
    """Delivers every request, but the answer to the first POST is lost on the way back."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST":
            self.keys.append(request.headers["Idempotency-Key"])
            if len(self.keys) == 1:
                response.read()
                raise httpx.ReadError("connection reset", request=request)
        return response


def test_sdk_retry_after_a_lost_answer_gets_the_first_registration(fed):
    token = _token(fed)
    before = _count(fed.app, clients)
    transport = _LoseFirstAnswer()
    sdk = FedTuneClient(fed.app.url, allow_http=True, transport=transport)
    sdk._sleep = lambda _seconds: None  # retry at once

    with sdk:
        reg = sdk.register_client(token, "org-lost-answer")

    assert len(transport.keys) == 2 and len(set(transport.keys)) == 1
    assert _count(fed.app, clients) == before + 1
    with fed.app.client(reg.api_key) as c:
        assert c.get(f"/v1/federations/{fed.id}").status_code == 200
