"""Auth matrix: every route × every kind of caller answers the expected status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from aggregator_service.api import deps, limits
from aggregator_service.services import access


@dataclass
class World:
    app: Any
    fed: Any  # federation A
    tokens: dict[str, str | None]
    revoked_id: str
    spec: dict[str, Any]
    delta: bytes


@pytest.fixture(scope="module")
def world(start_module_app, new_federation, spec_with, delta) -> World:
    app = start_module_app()
    spec = spec_with(quorum=3, min_updates=2)
    fed = new_federation(app, spec, 2)
    other = new_federation(app, {**spec, "name": "other-federation"}, 1)
    member, revoked = sorted(fed.keys)
    with app.client() as admin:
        assert admin.delete(f"/v1/clients/{revoked}").status_code == 200
    tokens = {
        "none": None,
        "wrong": "ftk_not-a-real-key",
        "revoked": fed.keys[revoked],
        "other_federation": next(iter(other.keys.values())),
        "client": fed.keys[member],
        "admin": "fta_test-admin-token-0123456789abcdef",
    }
    body = delta(fed.info, 1, fed.info.global_version)
    return World(app, fed, tokens, revoked, spec, body)


# route -> (method, path, body kind, expected status per caller kind)
_ADMIN = {"other_federation": 403, "client": 403}
_MEMBER = {"other_federation": 403, "client": 200, "admin": 200}
ROUTES: dict[str, tuple[str, str, str, dict[str, int]]] = {
    "create_federation": ("POST", "/v1/federations", "spec", {**_ADMIN, "admin": 201}),
    "get_federation": ("GET", "/v1/federations/{fid}", "", _MEMBER),
    "enrollment_tokens": (
        "POST",
        "/v1/federations/{fid}/enrollment-tokens",
        "enroll",
        {**_ADMIN, "admin": 201},
    ),
    "list_enrollment_tokens": (
        "GET",
        "/v1/federations/{fid}/enrollment-tokens",
        "",
        {**_ADMIN, "admin": 200},
    ),
    "revoke_enrollment_token": (
        "DELETE",
        "/v1/federations/{fid}/enrollment-tokens/0123456789abcdef",
        "",
        {**_ADMIN, "admin": 404},
    ),
    "list_clients": ("GET", "/v1/clients", "", {**_ADMIN, "admin": 200}),
    # another client's key (a revoked one: the admin may rotate a live client's key)
    "rotate_key": ("POST", "/v1/clients/{revoked}/key", "", {**_ADMIN, "admin": 403}),
    "revoke_client": ("DELETE", "/v1/clients/{revoked}", "", {**_ADMIN, "admin": 200}),
    "current_round": ("GET", "/v1/federations/{fid}/rounds/current", "", _MEMBER),
    "history": ("GET", "/v1/federations/{fid}/rounds", "", _MEMBER),
    "state": ("GET", "/v1/federations/{fid}/state", "", _MEMBER),
    "base": ("GET", "/v1/federations/{fid}/base", "", _MEMBER),
    "upload": (
        "PUT",
        "/v1/federations/{fid}/rounds/1/update",
        "delta",
        {"other_federation": 403, "client": 201, "admin": 403},
    ),
}
CALLERS = ["none", "wrong", "revoked", "other_federation", "client", "admin"]
CELLS = [(route, caller) for route in ROUTES for caller in CALLERS]


@pytest.mark.parametrize(("route", "caller"), CELLS, ids=[f"{r}-{c}" for r, c in CELLS])
def test_route_answers_caller_with_expected_status(world: World, route: str, caller: str):
    method, template, body_kind, expected = ROUTES[route]
    want = expected.get(caller, 401)
    path = template.format(fid=world.fed.id, revoked=world.revoked_id)
    kwargs: dict[str, Any] = {
        "spec": {"json": {**world.spec, "name": "created-by-matrix"}},
        "enroll": {"json": {"uses": 1}},
        "delta": {"content": world.delta},
        "": {},
    }[body_kind]

    with world.app.client(world.tokens[caller]) as c:
        r = c.request(method, path, **kwargs)

    assert r.status_code == want, r.text
    if want in (401, 403):
        assert r.json()["error"] == {401: "unauthorized", 403: "forbidden"}[want]
        assert r.json()["detail"]
    if want == 401:
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="fedtune"'


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_routes_need_no_token(world: World, path: str):
    with world.app.client(None) as c:
        assert c.get(path).status_code == 200


@pytest.mark.parametrize(
    ("caller", "route", "want"),
    [("admin", "enrollment-tokens", 201), ("client", "evaluations", 201)],
)
def test_a_request_with_a_body_is_authenticated_once(
    world: World, monkeypatch: pytest.MonkeyPatch, caller: str, route: str, want: int
):
    """The body guard authenticates before reading the body; the route takes its answer."""
    seen: list[str | None] = []

    def counting(core: Any, token: str | None) -> access.Principal:
        seen.append(token)
        return access.authenticate(core, token)

    body = {
        "enrollment-tokens": {"uses": 1},
        "evaluations": {
            "version": world.fed.info.global_version,
            "val_accuracy": 0.5,
            "val_examples": 10,
        },
    }[route]
    monkeypatch.setattr(limits, "authenticate", counting)
    monkeypatch.setattr(deps, "authenticate", counting)
    with world.app.client(world.tokens[caller]) as c:
        r = c.post(f"/v1/federations/{world.fed.id}/{route}", json=body)

    assert r.status_code == want, r.text
    assert seen == [world.tokens[caller]]
