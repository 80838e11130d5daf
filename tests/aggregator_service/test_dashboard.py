"""The dashboard over real HTTP: signing in with the admin token or a viewer token, what the
pages and the live JSON show (and never show), the cookie, the headers, the static files.

A viewer token opens the dashboard only: the API refuses it, saying what it is for.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from aggregator_service.api.limits import DASHBOARD_FORM_BYTES
from aggregator_service.dashboard.assets import STATIC_DIR
from aggregator_service.services.context import hash_token
from aggregator_service.services.dashboard import organisation_labels
from aggregator_service.storage.database import parse_database_url
from lab.local_federation import start_server
from tests.aggregator_service.conftest import (
    ADMIN_TOKEN,
    AppPool,
    Federation,
    LiveApp,
    create_federation,
    tiny_spec,
)
from tests.aggregator_service.test_secagg_service import secure_orgs, secure_spec, until_phase

LOGIN = "/dashboard/login"


def browser(url: str, **kw: Any) -> httpx.Client:
    """A cookie-keeping client that follows no redirect by itself (the tests look at them)."""
    return httpx.Client(base_url=url, timeout=60, **kw)


def sign_in(c: httpx.Client, token: str, next: str = "/dashboard") -> httpx.Response:
    return c.post(LOGIN, data={"token": token, "next": next})


@contextmanager
def signed_in(url: str, token: str, **kw: Any) -> Iterator[httpx.Client]:
    with browser(url, **kw) as c:
        r = sign_in(c, token)
        assert r.status_code == 303, r.text
        yield c


def cookie_attributes(r: httpx.Response) -> dict[str, str]:
    """The attributes of the dashboard cookie set by `r`, lower-cased names."""
    (header,) = [h for h in r.headers.get_list("set-cookie") if h.startswith("fedtune_dashboard=")]
    parts = [p.strip() for p in header.split(";")]
    attrs = {p.split("=", 1)[0].lower(): [*p.split("=", 1), ""][1] for p in parts[1:]}
    attrs["value"] = parts[0].split("=", 1)[1]
    return attrs


def new_viewer_token(app: LiveApp, name: str = "wall-screen") -> dict[str, Any]:
    with app.client() as admin:
        r = admin.post("/v1/viewer-tokens", json={"name": name})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture
def fed(federation: Callable[..., Federation]) -> Federation:
    return federation(clients=2, quorum=2, min_updates=2)


def test_unauthenticated_pages_go_to_sign_in_and_the_json_answers_401(fed: Federation):
    with browser(fed.app.url) as c:
        index = c.get("/dashboard")
        page = c.get(f"/dashboard/federations/{fed.id}")
        live = c.get(f"/dashboard/federations/{fed.id}/live")
        listing = c.get("/dashboard/live")
        form = c.get(LOGIN)

    assert index.status_code == 303 and index.headers["location"] == f"{LOGIN}?next=%2Fdashboard"
    assert page.status_code == 303
    assert page.headers["location"] == f"{LOGIN}?next=%2Fdashboard%2Ffederations%2F{fed.id}"
    assert live.status_code == 401 and live.json()["error"] == "unauthorized"
    assert listing.status_code == 401 and listing.json()["detail"]
    assert form.status_code == 200 and 'action="/dashboard/login"' in form.text


def test_the_admin_signs_in_and_the_cookie_is_httponly_and_strict(fed: Federation):
    with browser(fed.app.url) as c:
        r = sign_in(c, ADMIN_TOKEN, next=f"/dashboard/federations/{fed.id}")
        page = c.get(r.headers["location"])
        index = c.get("/dashboard")
        listing = c.get("/dashboard/live").json()

    assert r.status_code == 303 and r.headers["location"] == f"/dashboard/federations/{fed.id}"
    attrs = cookie_attributes(r)
    assert "httponly" in attrs and attrs["samesite"].lower() == "strict"
    assert attrs["path"] == "/dashboard" and "secure" not in attrs  # plain HTTP here
    assert ADMIN_TOKEN not in attrs["value"]  # encoded, not the token as typed
    assert page.status_code == 200 and "tiny-clip-bias" in page.text and fed.id in page.text
    assert index.status_code == 200 and f'href="/dashboard/federations/{fed.id}"' in index.text
    assert ">admin<" in page.text
    assert [(f["id"], f["name"], f["status"]) for f in listing] == [
        (fed.id, "tiny-clip-bias", "running")
    ]
    assert listing[0]["current_round"] == 1 and listing[0]["total_rounds"] == 3
    assert (listing[0]["family"], listing[0]["method"]) == ("open_clip", "bias")


def test_the_cookie_is_secure_over_tls(tmp_path: Path, tls: tuple[Path, Path, Path]):
    server = start_server(tmp_path / "server", tls=tls)
    try:
        verify = ssl.create_default_context(cafile=str(tls[2]))
        with browser(server.url, verify=verify) as c:
            r = sign_in(c, server.admin_token)
            index = c.get("/dashboard")
        with browser(server.url, verify=verify) as c:
            sign_in(c, server.admin_token)
            out = c.post("/dashboard/logout")
    finally:
        server.stop()

    attrs = cookie_attributes(r)
    assert "secure" in attrs and "httponly" in attrs and attrs["samesite"].lower() == "strict"
    assert index.status_code == 200 and "Federations" in index.text
    assert "secure" in cookie_attributes(out) and cookie_attributes(out)["max-age"] == "0"


@pytest.mark.parametrize(
    ("settings", "secure"),
    [({}, False), ({"insecure_http": True}, True)],
    ids=["plain-http-on-loopback", "behind-a-tls-terminating-proxy"],
)
def test_the_cookie_is_secure_unless_served_in_plain_http_on_loopback(
    start_app: AppPool, settings: dict[str, Any], secure: bool
):
    """Behind the proxy the service sees plain HTTP, yet browsers reach it over TLS only."""
    app = start_app(**settings)
    with browser(app.url) as c:
        signed = sign_in(c, ADMIN_TOKEN)
        out = c.post("/dashboard/logout")

    assert signed.status_code == 303
    assert ("secure" in cookie_attributes(signed)) is secure
    assert ("secure" in cookie_attributes(out)) is secure


def test_a_wrong_token_gets_the_sign_in_page_again(fed: Federation):
    with browser(fed.app.url) as c:
        wrong = sign_in(c, "fta_not-the-admin-token-0123456789")
        empty = sign_in(c, "")
        after = c.get("/dashboard")

    for r in (wrong, empty):
        assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
        assert 'class="error"' in r.text and "Traceback" not in r.text
        assert not r.headers.get_list("set-cookie")
    assert "not valid" in wrong.text and "Enter the admin token" in empty.text
    assert after.status_code == 303


def test_sign_in_returns_only_to_a_dashboard_page(fed: Federation):
    with browser(fed.app.url) as c:
        for target in ("https://elsewhere.example/", "//elsewhere.example", "/v1/clients"):
            r = sign_in(c, ADMIN_TOKEN, next=target)
            assert (r.status_code, r.headers["location"]) == (303, "/dashboard")


def test_a_viewer_token_opens_the_dashboard_and_never_the_api(fed: Federation):
    viewer = new_viewer_token(fed.app)
    assert viewer["token"].startswith("ftv_") and viewer["revoked"] is False

    with signed_in(fed.app.url, viewer["token"]) as c:
        page = c.get(f"/dashboard/federations/{fed.id}")
        live = c.get(f"/dashboard/federations/{fed.id}/live")
    with fed.app.client(viewer["token"]) as api:
        refused = [
            api.get(f"/v1/federations/{fed.id}"),
            api.get(f"/v1/federations/{fed.id}/rounds"),
            api.get("/v1/clients"),
            api.get("/v1/viewer-tokens"),
            api.post("/v1/viewer-tokens", json={"name": "more"}),
            api.post(f"/v1/federations/{fed.id}/enrollment-tokens", json={"uses": 1}),
        ]

    assert page.status_code == 200 and "viewer (read-only)" in page.text
    assert live.status_code == 200 and live.json()["federation_id"] == fed.id
    assert [r.status_code for r in refused] == [401] * len(refused)
    assert all("dashboard viewer token" in r.json()["detail"] for r in refused)
    with fed.app.client() as admin:
        assert [t["name"] for t in admin.get("/v1/viewer-tokens").json()] == ["wall-screen"]


def test_a_revoked_viewer_token_is_refused_at_its_next_request(fed: Federation):
    viewer = new_viewer_token(fed.app)
    other = new_viewer_token(fed.app, "laptop")
    with signed_in(fed.app.url, viewer["token"]) as c:
        assert c.get(f"/dashboard/federations/{fed.id}/live").status_code == 200

        with fed.app.client() as admin:
            revoked = admin.delete(f"/v1/viewer-tokens/{viewer['id']}")
            again = admin.delete(f"/v1/viewer-tokens/{viewer['id']}")
            unknown = admin.delete("/v1/viewer-tokens/vwt_nosuchtoken")
            listed = admin.get("/v1/viewer-tokens").json()

        live = c.get(f"/dashboard/federations/{fed.id}/live")
        page = c.get(f"/dashboard/federations/{fed.id}")
        told = c.get(page.headers["location"])
        login = sign_in(c, viewer["token"])
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    assert [(t["name"], t["revoked"]) for t in listed] == [("wall-screen", True), ("laptop", False)]
    assert all("token" not in t for t in listed)
    assert page.status_code == 303 and page.headers["location"].startswith(LOGIN)
    assert "refused=1" in page.headers["location"]
    assert cookie_attributes(page)["max-age"] == "0"  # the refused cookie is cleared
    assert told.status_code == 200 and "no longer accepted" in told.text
    assert live.status_code == 401
    assert login.status_code == 401 and "not valid" in login.text
    with signed_in(fed.app.url, other["token"]) as still:
        assert still.get("/dashboard").status_code == 200


def test_only_the_admin_manages_viewer_tokens(fed: Federation):
    with fed.as_client(next(iter(fed.keys))) as client:
        refused = [
            client.post("/v1/viewer-tokens", json={"name": "x"}),
            client.get("/v1/viewer-tokens"),
            client.delete("/v1/viewer-tokens/vwt_anything"),
        ]
    with fed.app.client(None) as anon:
        anonymous = anon.post("/v1/viewer-tokens", json={"name": "x"})
    with fed.app.client() as admin:
        bad = [
            admin.post("/v1/viewer-tokens", json={}),
            admin.post("/v1/viewer-tokens", json={"name": ""}),
            admin.post("/v1/viewer-tokens", json={"name": "x" * 129}),
            admin.post("/v1/viewer-tokens", json={"name": "a\u0000b"}),
        ]
        listed = admin.get("/v1/viewer-tokens").json()

    assert [r.status_code for r in refused] == [403, 403, 403]
    assert anonymous.status_code == 401
    assert [r.status_code for r in bad] == [422] * 4 and all(r.json()["detail"] for r in bad)
    assert listed == []  # nothing refused left a token behind


def test_a_viewer_token_creation_is_idempotent(fed: Federation):
    with fed.app.client() as admin:
        first = admin.post(
            "/v1/viewer-tokens", json={"name": "wall"}, headers={"Idempotency-Key": "k-1"}
        )
        retry = admin.post(
            "/v1/viewer-tokens", json={"name": "wall"}, headers={"Idempotency-Key": "k-1"}
        )
        listed = admin.get("/v1/viewer-tokens").json()

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json() and retry.headers["Idempotent-Replayed"] == "true"
    assert len(listed) == 1


def test_no_secret_reaches_a_page_or_the_json(fed: Federation):
    viewer = new_viewer_token(fed.app)
    with fed.app.client() as admin:
        r = admin.post(f"/v1/federations/{fed.id}/enrollment-tokens", json={"uses": 1})
        enrollment = r.json()["token"]
    secrets = [ADMIN_TOKEN, viewer["token"], enrollment, *fed.keys.values()]
    secrets += [hash_token(s) for s in list(secrets)]

    bodies = []
    for token in (ADMIN_TOKEN, viewer["token"]):
        with signed_in(fed.app.url, token) as c:
            for path in ("/dashboard", f"/dashboard/federations/{fed.id}"):
                bodies.append(c.get(path).text)
            bodies.append(c.get(f"/dashboard/federations/{fed.id}/live").text)
            bodies.append(c.get("/dashboard/live").text)
            bodies.append(c.get(LOGIN).text)
    with browser(fed.app.url) as c:
        bodies.append(sign_in(c, "ftv_wrong-token").text)

    assert len(bodies) == 11
    for body in bodies:
        for secret in secrets:
            assert secret not in body


def test_pages_carry_the_security_headers(fed: Federation):
    with signed_in(fed.app.url, ADMIN_TOKEN) as c:
        responses = [
            c.get("/dashboard"),
            c.get(f"/dashboard/federations/{fed.id}"),
            c.get(f"/dashboard/federations/{fed.id}/live"),
            c.get("/dashboard/live"),
            c.get(LOGIN),
            c.get("/dashboard/federations/fed_nosuchone"),
        ]

    assert [r.status_code for r in responses] == [200, 200, 200, 200, 200, 404]
    for r in responses:
        csp = r.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "style-src 'self';" in csp
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"
    assert "<script>" not in responses[1].text and " style=" not in responses[1].text
    assert "No federation fed_nosuchone" in responses[5].text


def test_static_files_are_versioned_and_cached_for_a_year(fed: Federation):
    with signed_in(fed.app.url, ADMIN_TOKEN) as c:
        page = c.get(f"/dashboard/federations/{fed.id}").text
    urls = re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', page)
    names = {u.rsplit("/", 1)[1] for u in urls}
    assert names == {
        "uPlot-1.6.32.iife.min.js",
        "uPlot-1.6.32.min.css",
        "dashboard.js",
        "dashboard.css",
    }

    with browser(fed.app.url) as anon:  # the sign-in page needs them too: no cookie asked
        for url in urls:
            r = anon.get(url)
            name = url.rsplit("/", 1)[1]
            assert r.status_code == 200, url
            assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert r.content == (STATIC_DIR / name).read_bytes()
            assert url.split("/")[3] == hashlib.sha256(r.content).hexdigest()[:16]
            kind = "text/javascript" if name.endswith(".js") else "text/css"
            assert r.headers["content-type"].startswith(kind)
        stale = anon.get("/dashboard/static/0123456789abcdef/dashboard.js")
        outside = anon.get(f"{urls[0].rsplit('/', 1)[0]}/..%2F..%2Fservices%2Fviewers.py")
    assert stale.status_code == 404 and outside.status_code == 404


def test_the_vendored_chart_library_is_the_noted_one():
    note = (STATIC_DIR / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| (\S+) \| \d+ \| ([0-9a-f]{64}) \|$", note, flags=re.MULTILINE))

    assert set(rows) == {"uPlot-1.6.32.iife.min.js", "uPlot-1.6.32.min.css", "uPlot-1.6.32.LICENSE"}
    for name, digest in rows.items():
        assert hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (STATIC_DIR / "uPlot-1.6.32.LICENSE").read_text(encoding="utf-8")


def test_the_sign_in_form_body_is_bounded(fed: Federation):
    with browser(fed.app.url) as c:
        big = c.post(LOGIN, data={"token": "x" * DASHBOARD_FORM_BYTES})
        json_body = c.post(LOGIN, json={"token": ADMIN_TOKEN})
        after = c.get("/dashboard")

    assert big.status_code == 413 and big.json()["error"] == "payload_too_large"
    assert json_body.status_code == 415 and "Send the sign-in form" in json_body.text
    assert not json_body.headers.get_list("set-cookie")
    assert after.status_code == 303


def test_a_sign_in_form_with_too_many_fields_is_refused_with_400(fed: Federation):
    fields = {f"field{i}": "x" for i in range(8)} | {"token": ADMIN_TOKEN}
    with browser(fed.app.url) as c:
        r = c.post(LOGIN, data=fields)
        after = c.get("/dashboard")

    assert r.status_code == 400 and "Too many fields" in r.text
    assert not r.headers.get_list("set-cookie")
    assert after.status_code == 303


def test_sign_out_clears_the_cookie(fed: Federation):
    with signed_in(fed.app.url, ADMIN_TOKEN) as c:
        out = c.post("/dashboard/logout")
        after = c.get("/dashboard")

    assert out.status_code == 303 and out.headers["location"] == LOGIN
    attrs = cookie_attributes(out)
    assert attrs["max-age"] == "0" and attrs["path"] == "/dashboard" and "httponly" in attrs
    assert after.status_code == 303


def test_the_live_json_follows_the_rounds(fed: Federation, delta: Callable[..., bytes]):
    orgs = list(fed.keys)  # registration order: org-0, org-1
    with signed_in(fed.app.url, ADMIN_TOKEN) as c:
        live_url = f"/dashboard/federations/{fed.id}/live"
        base = fed.status()["global_version"]
        with fed.as_client(orgs[0]) as first:
            served = len(first.get(f"/v1/federations/{fed.id}/state").content)
        sizes = []
        snapshots = []
        for i, cid in enumerate(orgs):
            body = delta(
                fed.info,
                1,
                base,
                num_examples=10 * (i + 1),
                metrics={"val_accuracy": 0.5 + 0.2 * i, "train_loss": 2.0 - i, "examples_per_s": 9},
            )
            assert fed.upload(cid, 1, body).status_code == 201
            sizes.append(len(body))
            if i == 0:
                snapshots.append(c.get(live_url).json())
        fed.wait_round(2)
        after = c.get(live_url).json()
        page = c.get(f"/dashboard/federations/{fed.id}").text

    during = snapshots[0]["round"]
    assert (during["number"], during["status"], during["received"]) == (1, "open", 1)
    assert (during["quorum"], during["min_updates"]) == (2, 2)
    assert 0 < during["seconds_left"] <= fed.info.spec.rounds.deadline_s
    now = after["round"]
    assert (now["number"], now["total"], now["status"], now["received"]) == (2, 3, "open", 0)
    first_round = after["history"][0]
    assert first_round["round"] == 1 and first_round["status"] == "closed"
    assert (first_round["participants"], first_round["closed_by"]) == (2, "quorum")
    assert first_round["bytes_in"] == sum(sizes) and first_round["bytes_out"] == served
    assert first_round["aggregation_seconds"] >= 0
    assert first_round["metrics"] == pytest.approx(
        {"val_accuracy": (10 * 0.5 + 20 * 0.7) / 30, "train_loss": (10 * 2.0 + 20 * 1.0) / 30}
    )
    by_org = first_round["by_organisation"]
    assert set(by_org) == {"org-0", "org-1"}
    assert by_org["org-0"] == pytest.approx({"val_accuracy": 0.5, "train_loss": 2.0})
    assert by_org["org-1"] == pytest.approx({"val_accuracy": 0.7, "train_loss": 1.0})
    assert [r["round"] for r in after["history"]] == [1, 2]
    assert [(o["name"], o["updates"]) for o in after["organisations"]] == [
        ("org-0", 1),
        ("org-1", 1),
    ]
    assert all(o["last_seen"] is not None and not o["revoked"] for o in after["organisations"])
    assert "quorum" in page and '<span id="round-number">2</span>' in page


def test_organisations_of_the_same_name_each_keep_their_own_metrics(
    start_app: AppPool, delta: Callable[..., bytes]
):
    fed = create_federation(start_app(), tiny_spec(quorum=2, min_updates=2), 0)
    with fed.app.client() as admin:
        token = admin.post(f"/v1/federations/{fed.id}/enrollment-tokens", json={"uses": 3}).json()[
            "token"
        ]
    with fed.app.client(None) as anon:
        for name in ("st-marys", "st-marys", "north"):
            r = anon.post("/v1/clients", json={"enrollment_token": token, "name": name})
            fed.keys[r.json()["client_id"]] = r.json()["api_key"]
    *twins, north = fed.keys
    base = fed.status()["global_version"]
    for accuracy, cid in zip((0.25, 0.75), twins, strict=True):
        body = delta(fed.info, 1, base, metrics={"val_accuracy": accuracy, "train_loss": 1.0})
        assert fed.upload(cid, 1, body).status_code == 201
    fed.wait_round(2)

    with signed_in(fed.app.url, ADMIN_TOKEN) as c:
        view = c.get(f"/dashboard/federations/{fed.id}/live").json()

    by_org = view["history"][0]["by_organisation"]
    assert {k: v["val_accuracy"] for k, v in by_org.items()} == {
        f"st-marys ({twins[0]})": 0.25,
        f"st-marys ({twins[1]})": 0.75,
    }
    shown = {o["client_id"]: (o["name"], o["label"]) for o in view["organisations"]}
    assert shown == {
        twins[0]: ("st-marys", f"st-marys ({twins[0]})"),
        twins[1]: ("st-marys", f"st-marys ({twins[1]})"),
        north: ("north", "north"),
    }


@pytest.mark.parametrize(
    ("names", "labels"),
    [
        ({"c1": "a", "c2": "b"}, {"c1": "a", "c2": "b"}),
        ({"c1": "a", "c2": "a", "c3": "b"}, {"c1": "a (c1)", "c2": "a (c2)", "c3": "b"}),
        # a name chosen to equal another's label is told apart as well
        (
            {"c1": "a", "c2": "a", "c3": "a (c1)"},
            {"c1": "a (c1) (c1)", "c2": "a (c2)", "c3": "a (c1) (c3)"},
        ),
    ],
    ids=["distinct", "shared-name", "name-equal-to-a-label"],
)
def test_every_organisation_gets_a_label_of_its_own(names: dict[str, str], labels: dict[str, str]):
    assert organisation_labels(names) == labels


def test_a_database_from_before_viewer_tokens_gains_the_table(start_app: AppPool):
    first = start_app()
    first.stop()
    db_file = next(start_app.data_dir.glob("*.db"))
    with sqlite3.connect(db_file) as conn:
        conn.execute("DROP TABLE viewer_tokens")

    app = start_app()
    viewer = new_viewer_token(app)
    with signed_in(app.url, viewer["token"]) as c:
        assert c.get("/dashboard").status_code == 200


def test_viewer_tokens_on_postgresql_including_a_database_from_before_them(
    pg_url: str, start_app: AppPool
):
    first = start_app(database_url=pg_url)
    first.stop()
    engine = create_engine(parse_database_url(pg_url))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE viewer_tokens"))
    engine.dispose()

    app = start_app(database_url=pg_url)
    viewer = new_viewer_token(app)
    with signed_in(app.url, viewer["token"]) as c:
        assert c.get("/dashboard").status_code == 200
        with app.client() as admin:
            assert admin.delete(f"/v1/viewer-tokens/{viewer['id']}").json()["revoked"] is True
        assert c.get("/dashboard").status_code == 303


def test_the_list_says_when_there_is_no_federation_yet(start_app: AppPool):
    app = start_app()
    with signed_in(app.url, ADMIN_TOKEN) as c:
        page = c.get("/dashboard")
        listing = c.get("/dashboard/live")

    assert page.status_code == 200 and "No federation yet" in page.text
    assert listing.json() == []


def test_a_secure_round_shows_its_phase_and_who_has_answered(
    start_app: AppPool, tmp_path: Path
) -> None:
    """The updates counter stays at 0 while SecAgg runs (masked inputs count once the round
    aggregates), so the page shows the protocol: its phase, who answered of whom it waits
    for, the phase's countdown and attempt, and the latest event."""
    fed = create_federation(start_app(), secure_spec(3, share_keys_s=600), 3)
    orgs = secure_orgs(fed, tmp_path)
    live_url = f"/dashboard/federations/{fed.id}/live"
    with signed_in(fed.app.url, ADMIN_TOKEN) as c:
        before = c.get(live_url).json()["secure"]
        for o in orgs:
            o.round.advertise(1, 1)
        until_phase(orgs, "share")
        orgs[0].round._post(1, "/shares", orgs[0].round.share_body(1, orgs[0].state()))
        sharing = c.get(live_url).json()
        page = c.get(f"/dashboard/federations/{fed.id}").text

    assert (before["phase"], before["answered"], before["expected"]) == ("advertise", 0, 3)
    secure = sharing["secure"]
    assert (secure["attempt"], secure["phase"], secure["answered"], secure["expected"]) == (
        1,
        "share",
        1,
        3,
    )
    assert 0 < secure["seconds_left"] <= 600 and secure["events"] == []
    assert sharing["round"]["received"] == 0
    assert '<span id="secure-phase">share</span>' in page
    assert '<span id="secure-answered">1</span>' in page


def test_a_plain_federation_has_no_secure_aggregation_card(fed: Federation):
    with signed_in(fed.app.url, ADMIN_TOKEN) as c:
        live = c.get(f"/dashboard/federations/{fed.id}/live").json()
        page = c.get(f"/dashboard/federations/{fed.id}").text
    assert live["secure"] is None and "secure-card" not in page
