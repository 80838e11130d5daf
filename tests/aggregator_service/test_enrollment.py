"""Enrollment tokens and registration; invalid specs and unknown routes answer ErrorBody."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from aggregator_service.storage.tables import enrollment_tokens


@pytest.fixture(scope="module")
def fed(start_module_app, new_federation, spec_with):
    return new_federation(start_module_app(), spec_with(), 0)


def _token(fed, uses: int = 1) -> str:
    with fed.app.client() as c:
        r = c.post(f"/v1/federations/{fed.id}/enrollment-tokens", json={"uses": uses})
    assert r.status_code == 201
    token: str = r.json()["token"]
    return token


def _register(fed, token: str, name: str = "org"):
    with fed.app.client(None) as c:
        return c.post("/v1/clients", json={"enrollment_token": token, "name": name})


def test_token_allows_exactly_its_number_of_registrations(fed):
    token = _token(fed, uses=2)

    answers = [_register(fed, token, f"org-{i}") for i in range(3)]

    assert [a.status_code for a in answers] == [201, 201, 403]
    assert answers[2].json()["error"] == "enrollment_invalid"
    assert "no uses left" in answers[2].json()["detail"]
    assert answers[0].json()["api_key"].startswith("ftk_")


def test_unknown_and_expired_tokens_are_refused(fed):
    token = _token(fed)
    with fed.app.core.db.write() as conn:
        conn.execute(update(enrollment_tokens).values(expires_at=0))

    unknown = _register(fed, "fte_made-up")
    expired = _register(fed, token)

    assert (unknown.status_code, unknown.json()["error"]) == (401, "enrollment_invalid")
    assert (expired.status_code, expired.json()["error"]) == (403, "enrollment_invalid")
    assert "expired" in expired.json()["detail"]


def test_revoked_client_key_stops_working_at_once(fed):
    reg = _register(fed, _token(fed)).json()
    with fed.app.client(reg["api_key"]) as c:
        before = c.get(f"/v1/federations/{fed.id}").status_code
    with fed.app.client() as admin:
        revoked = admin.delete(f"/v1/clients/{reg['client_id']}").json()
        listed = admin.get("/v1/clients", params={"federation_id": fed.id}).json()
    with fed.app.client(reg["api_key"]) as c:
        after = c.get(f"/v1/federations/{fed.id}")

    assert (before, after.status_code, after.json()["error"]) == (200, 401, "unauthorized")
    assert revoked["revoked"] is True
    assert any(c["client_id"] == reg["client_id"] and c["revoked"] for c in listed)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "x"}, "model"),
        (
            {
                "name": "bad name!",
                "model": {"family": "open_clip", "arch": "a"},
                "task": {"classes": ["a"]},
                "method": {"name": "bias"},
            },
            "name",
        ),
        ("not json", "JSON"),
    ],
)
def test_invalid_spec_is_refused_with_the_field_named(fed, body, fragment):
    with fed.app.client() as c:
        if isinstance(body, str):
            r = c.post("/v1/federations", content=body)
        else:
            r = c.post("/v1/federations", json=body)

    assert r.status_code == 422 and r.json()["error"] == "invalid_spec"
    assert fragment in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ("[" * 30_000, 400, "nests too deeply"),
        ('{"name": ' + "1" * 5_000 + "}", 422, "JSON federation spec"),
    ],
    ids=["nested-30000-deep", "integer-of-5000-digits"],
)
def test_an_unreadable_spec_body_is_refused_and_creates_nothing(fed, body, status, fragment):
    with fed.app.client() as c:
        before = c.get("/v1/federations").json()
        r = c.post("/v1/federations", content=body, headers={"Content-Type": "application/json"})
        after = c.get("/v1/federations").json()

    assert r.status_code == status and r.json()["error"] == "invalid_spec"
    assert fragment in r.json()["detail"]
    assert after == before


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("org\x1b[2K\rrevoked", "U+001B"),  # erase the terminal's row and overwrite it
        ("org\nsecond-line", "U+000A"),
        ("org\ttab", "U+0009"),
        ("org\x00name", "U+0000"),
        ("org\x7f", "U+007F"),
        ("org\x85", "U+0085"),  # C1 next line
        ("org\u202ekrowten", "U+202E"),  # right-to-left override
        ("org\u2028line", "U+2028"),
    ],
    ids=["esc-cr", "lf", "tab", "nul", "del", "c1", "bidi-override", "line-separator"],
)
def test_an_organisation_name_with_a_control_character_is_refused(fed, name, shown):
    token = _token(fed)

    r = _register(fed, token, name)
    retried = _register(fed, token, "org-plain")

    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    detail = r.json()["detail"]
    assert detail.startswith("name: must not contain a control character") and shown in detail
    assert retried.status_code == 201  # the refusal spent no use of the token


@pytest.mark.parametrize(
    "name", ["Hôpital Saint-Éloi", "بیمارستان\u200cمهر", "clinic \U0001f469\u200d\u2695\ufe0f"]
)
def test_an_organisation_name_in_any_script_registers(fed, name):
    r = _register(fed, _token(fed), name)

    assert r.status_code == 201 and r.json()["name"] == name


def test_unknown_route_and_federation_answer_error_body(fed):
    with fed.app.client() as c:
        route = c.get("/v1/nothing-here")
        federation = c.get("/v1/federations/fed_unknown")

    assert (route.status_code, route.json()["error"]) == (404, "not_found")
    assert (federation.status_code, federation.json()["error"]) == (404, "not_found")
