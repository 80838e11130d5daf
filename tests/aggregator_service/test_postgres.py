"""The service on PostgreSQL: a round, two server processes racing the quorum, refusals
that change no row, and input PostgreSQL cannot store refused as on SQLite.

Runs when FEDTUNE_TEST_POSTGRES_URL names a server whose role may create databases; each
test (or module fixture) works in a fresh database that is dropped afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from sqlalchemy import create_engine, func, select

from aggregator_service.storage.database import parse_database_url
from aggregator_service.storage.tables import enrollment_tokens, metadata, rounds
from lab.local_federation import ServerProcess, start_server
from tests.aggregator_service.test_uploads import CASES, MAX_UPLOAD_MB, Scene, stage_scene
from tests.deltas import make_delta, random_fill
from tests.pgserver import fresh_database

ADMIN = "fta_postgres-test-admin-0123456789abcdef"


def table_rows(url: str) -> dict[str, Any]:
    """Row counts of every table, the rounds and the tokens' uses, read on a connection of
    our own (not the service's)."""
    engine = create_engine(parse_database_url(url))
    try:
        with engine.connect() as conn:
            counts = {
                t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in metadata.sorted_tables
            }
            round_rows = conn.execute(
                select(rounds).order_by(rounds.c.federation_id, rounds.c.number)
            ).all()
            uses = conn.execute(
                select(enrollment_tokens.c.token_hash, enrollment_tokens.c.uses_left).order_by(
                    enrollment_tokens.c.token_hash
                )
            ).all()
    finally:
        engine.dispose()
    return {
        "counts": counts,
        "rounds": [r._asdict() for r in round_rows],
        "uses": [tuple(u) for u in uses],
    }


def test_quorum_round_on_postgres_gives_old_plus_example_weighted_mean(
    pg_url, start_app, new_federation, spec_with, delta
):
    app = start_app(database_url=pg_url)
    spec = spec_with(quorum=3, min_updates=3, total=2)
    spec["aggregation"] = {"max_weight_share": 1.0, "clip_norm": None}  # plain example weights
    fed = new_federation(app, spec, 3)
    cids = sorted(fed.keys)
    old = fed.state()
    examples = dict(zip(cids, (10, 30, 60), strict=True))
    fills = {cid: random_fill(i) for i, cid in enumerate(cids)}

    for cid in cids:
        body = delta(fed.info, 1, fed.info.global_version, examples[cid], fills[cid])
        assert fed.upload(cid, 1, body).status_code == 201
    status = fed.wait_round(2)

    new = fed.state()
    for name, t in old.items():
        mean = sum(fills[c](name, t.shape) * examples[c] / 100 for c in cids)
        torch.testing.assert_close(new[name], t + mean, rtol=1e-6, atol=1e-7)
    with app.client() as c:
        first = c.get(f"/v1/federations/{fed.id}/rounds").json()[0]
    assert first["closed_by"] == "quorum" and first["result_version"] == status["global_version"]
    rows = table_rows(pg_url)
    assert rows["counts"] == {
        "federations": 1,
        "clients": 3,
        "enrollment_tokens": 1,
        "rounds": 2,
        "updates": 3,
        "state_versions": 2,
        "idempotency_keys": 0,
        "exclusions": 0,
        "enrollment_token_revocations": 0,
        "previous_keys": 0,
        "round_leases": 1,
        "aggregation_attempts": 1,
        "evaluations": 0,
        "viewer_tokens": 0,
        "privacy_ledger": 0,
        "completions": 0,
        "secagg_rounds": 0,
        "secagg_steps": 0,
        "secagg_shares": 0,
    }
    assert [(r["number"], r["status"], r["received"]) for r in rows["rounds"]] == [
        (1, "closed", 3),
        (2, "open", 0),
    ]
    assert not (app.settings.data_dir / "fedtune.db").exists()


class Served:
    """A `fedtune-server serve` process behind the `client()` the conftest helpers call."""

    def __init__(self, proc: ServerProcess) -> None:
        self.proc = proc

    def client(self, token: str | None = ADMIN, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.proc.url, headers=headers, timeout=60, **kw)

    def counter(self, name: str) -> float:
        with self.client() as c:  # the admin token reads /metrics
            lines = c.get("/metrics").text.splitlines()
        return sum(float(line.split()[1]) for line in lines if line.startswith(name + " "))


@contextmanager
def two_servers(data_dir: Path, database_url: str) -> Iterator[tuple[Served, Served]]:
    """Two processes started together (both creating the schema) on one database and one
    data dir (one blob store)."""
    token_file = data_dir.parent / "admin-token"
    token_file.write_text(ADMIN + "\n")
    args = ["--database-url", database_url]
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(start_server, data_dir, extra_args=args, admin_token_file=token_file)
            for _ in range(2)
        ]
    started = [f.result() for f in futures if f.exception() is None]
    try:
        assert len(started) == 2, [str(f.exception()) for f in futures]
        yield Served(started[0]), Served(started[1])
    finally:
        for proc in started:
            proc.stop()


def _race(fed: Any, rnd: int, contenders: list[tuple[Served, str]]) -> list[httpx.Response]:
    """Each (server, client) uploads at the same moment."""
    base = fed.status()["global_version"]
    bodies = [_body(fed, rnd, base, 0.2) for _ in contenders]
    gate = threading.Barrier(len(contenders))
    answers: dict[int, httpx.Response] = {}

    def upload(i: int) -> None:
        server, cid = contenders[i]
        with server.client(fed.keys[cid]) as c:
            gate.wait()
            answers[i] = c.put(f"/v1/federations/{fed.id}/rounds/{rnd}/update", content=bodies[i])

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(contenders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [answers[i] for i in range(len(contenders))]


def _body(fed: Any, rnd: int, base: str, fill: float) -> bytes:
    return make_delta(fed.info, rnd, base, fill=fill)


def test_two_server_processes_on_one_postgres_database_aggregate_each_round_once(
    pg_url, tmp_path, new_federation, spec_with
):
    with two_servers(tmp_path / "data", pg_url) as (one, two):
        fed = new_federation(one, spec_with(quorum=3, min_updates=3, total=3), 4)
        c = sorted(fed.keys)
        accepted = 0
        for rnd in (1, 2, 3):
            base = fed.status()["global_version"]
            for cid, server in ((c[0], one), (c[1], two)):
                with server.client(fed.keys[cid]) as http:
                    r = http.put(
                        f"/v1/federations/{fed.id}/rounds/{rnd}/update",
                        content=_body(fed, rnd, base, 0.01),
                    )
                assert r.status_code == 201, r.text
            answers = _race(fed, rnd, [(one, c[2]), (two, c[3])])
            codes = sorted(a.status_code for a in answers)
            assert codes in ([201, 201], [201, 409]), [a.text for a in answers]
            assert all(a.json()["error"] == "round_closed" for a in answers if a.status_code == 409)
            accepted += 2 + codes.count(201)
            fed.wait_round(rnd + 1)

        histories = []
        for server in (one, two):
            with server.client() as http:
                histories.append(http.get(f"/v1/federations/{fed.id}/rounds").json())
        aggregated = [s.counter("fedtune_rounds_aggregated_total") for s in (one, two)]
        received = [s.counter("fedtune_updates_accepted_total") for s in (one, two)]
        final = fed.status()

    log = (tmp_path / "data" / "server.log").read_text()  # both processes append to it
    for rnd in (1, 2, 3):  # one process made each transition, and one closed each round
        assert log.count(f"round {rnd}: aggregating (quorum)") == 1, log
        assert log.count(f"round {rnd} closed -> ") == 1, log
    assert histories[0] == histories[1]
    assert [(h["round"], h["status"], h["closed_by"]) for h in histories[0]] == [
        (n, "closed", "quorum") for n in (1, 2, 3)
    ]
    assert sum(len(h["participants"]) for h in histories[0]) == accepted
    assert sum(aggregated) == 3 and sum(received) == accepted
    assert final["federation_status"] == "completed"
    rows = table_rows(pg_url)
    assert rows["counts"]["state_versions"] == 4 and rows["counts"]["updates"] == accepted
    assert [(r["number"], r["status"]) for r in rows["rounds"]] == [
        (n, "closed") for n in (1, 2, 3)
    ]


@dataclass
class Stage:
    """test_uploads' Scene (round 1 closed, round 2 open holding c0's update) on one backend,
    the URL its rows live at, and an unspent enrollment token."""

    scene: Scene
    db_url: str
    token: str

    @property
    def app(self) -> Any:
        return self.scene.fed.app

    def snapshot(self) -> tuple[dict[str, Any], list[str]]:
        root = self.app.core.blobs.root
        return table_rows(self.db_url), sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _stage(app: Any, db_url: str, new_federation: Any, spec_with: Any) -> Stage:
    scene = stage_scene(app, new_federation, spec_with)
    with app.client() as http:
        token = http.post(f"/v1/federations/{scene.fed.id}/enrollment-tokens", json={"uses": 1})
    return Stage(scene, db_url, token.json()["token"])


@pytest.fixture(scope="module")
def sqlite_stage(start_module_app, new_federation, spec_with) -> Stage:
    app = start_module_app(max_upload_mb=MAX_UPLOAD_MB)
    return _stage(app, app.settings.sqlalchemy_url(), new_federation, spec_with)


@pytest.fixture(scope="module")
def postgresql_stage(
    pg_server, start_module_app, tmp_path_factory, new_federation, spec_with
) -> Iterator[Stage]:
    with fresh_database(pg_server) as url:
        data = tmp_path_factory.mktemp("pg-data")
        app = start_module_app(data_dir=data, database_url=url, max_upload_mb=MAX_UPLOAD_MB)
        try:
            yield _stage(app, url, new_federation, spec_with)
        finally:
            app.stop()  # before its database is dropped


@pytest.fixture(params=["sqlite", "postgresql"])
def stage(request: pytest.FixtureRequest) -> Stage:
    staged: Stage = request.getfixturevalue(f"{request.param}_stage")
    return staged


@contextmanager
def unchanged(stage: Stage) -> Iterator[None]:
    before = stage.snapshot()
    yield
    assert stage.snapshot() == before


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_refused_upload_changes_no_postgres_row(postgresql_stage: Stage, case: str):
    who, rnd, body, status, code, fragment = CASES[case]
    scene = postgresql_stage.scene

    with unchanged(postgresql_stage):
        r = scene.fed.upload(scene.c[who], rnd, body(scene))

    assert r.status_code == status, r.text
    assert r.json()["error"] == code and fragment in r.json()["detail"]


def _get(path: str, **params: Any) -> Callable[[Stage], httpx.Response]:
    def send(stage: Stage) -> httpx.Response:
        with stage.app.client() as http:
            return http.get(path.format(fid=stage.scene.info.id), params=params)

    return send


def _upload(rnd: int, base: str | None = None) -> Callable[[Stage], httpx.Response]:
    def send(stage: Stage) -> httpx.Response:
        s = stage.scene
        return s.fed.upload(s.c[3], rnd, s.good(rnd=rnd, base=base or s.v1))

    return send


def _register(name: str) -> Callable[[Stage], httpx.Response]:
    def send(stage: Stage) -> httpx.Response:
        with stage.app.client(None) as http:
            return http.post("/v1/clients", json={"enrollment_token": stage.token, "name": name})

    return send


# name -> (request, status, error code, detail fragment)
UNSTORABLE: dict[str, tuple[Callable[[Stage], httpx.Response], int, str, str]] = {
    "nul_in_path": (_get("/v1/federations/{fid}%00/rounds/current"), 404, "not_found", "NUL"),
    "nul_in_query": (_get("/v1/clients", federation_id="fed\x00"), 422, "validation_error", "NUL"),
    "nul_in_client_name": (_register("org\x00name"), 422, "validation_error", "NUL"),
    "nul_in_base_version": (
        _upload(2, "a\x00" + "0" * 62),
        409,
        "stale_base_version",
        "not a global version",
    ),
    "state_round_past_int32": (
        _get("/v1/federations/{fid}/state", version=str(2**31)),
        404,
        "not_found",
        "no global state",
    ),
    "state_round_past_int64": (
        _get("/v1/federations/{fid}/state", version="9" * 30),
        404,
        "not_found",
        "no global state",
    ),
    "upload_round_past_int32": (_upload(2**31), 409, "round_closed", "has not opened yet"),
    "upload_round_past_int64": (_upload(10**30), 409, "round_closed", "has not opened yet"),
}


@pytest.mark.parametrize("case", UNSTORABLE, ids=list(UNSTORABLE))
def test_input_postgres_cannot_store_gets_the_same_refusal_on_both_backends(
    stage: Stage, case: str
):
    send, status, code, fragment = UNSTORABLE[case]

    with unchanged(stage):
        r = send(stage)

    assert r.status_code == status, r.text
    assert r.json()["error"] == code and fragment in r.json()["detail"]


def test_quorum_past_a_32_bit_integer_is_never_met_but_the_deadline_closes(
    stage: Stage, new_federation, spec_with
):
    rounds_spec = spec_with(quorum=2**31, min_updates=1, total=1, deadline_s=1.0)
    fed = new_federation(stage.app, rounds_spec, 1)
    (cid,) = fed.keys

    r = fed.upload(cid, 1, make_delta(fed.info, 1, fed.info.global_version))
    final = fed.wait_round(2)

    assert r.status_code == 201 and r.json()["round_status"] == "open"
    assert final["federation_status"] == "completed"
    with stage.app.client() as http:
        (only,) = http.get(f"/v1/federations/{fed.id}/rounds").json()
    assert only["closed_by"] == "deadline"


def _admin_post(server: Served, fid: str, action: str) -> httpx.Response:
    with server.client() as http:
        return http.post(f"/v1/federations/{fid}/{action}")


def _both(fid: str, action: str, one: Served, two: Served) -> list[httpx.Response]:
    """The same lifecycle request to both server processes at the same moment."""
    gate = threading.Barrier(2)

    def send(server: Served) -> httpx.Response:
        gate.wait()
        return _admin_post(server, fid, action)

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(send, (one, two)))


def test_pause_resume_and_cancel_hold_across_two_server_processes_on_postgres(
    pg_url, tmp_path, new_federation, spec_with
):
    with two_servers(tmp_path / "data", pg_url) as (one, two):
        fed = new_federation(one, spec_with(quorum=3, min_updates=3, total=2), 2)
        a, b = sorted(fed.keys)
        body = _body(fed, 1, fed.info.global_version, 0.01)
        revision = fed.status()["revision"]
        with ThreadPoolExecutor(1) as pool, two.client(fed.keys[a]) as waiter:
            woken = pool.submit(
                waiter.get,
                f"/v1/federations/{fed.id}/rounds/current",
                params={"wait_s": 30, "revision": revision},
            )
            paused = _admin_post(one, fed.id, "pause")
            seen_by_waiter = woken.result(timeout=60).json()["federation_status"]
        before = table_rows(pg_url)
        with two.client(fed.keys[a]) as http:
            refused_paused = http.put(f"/v1/federations/{fed.id}/rounds/1/update", content=body)
        after_refusal = table_rows(pg_url)

        resumed = _both(fed.id, "resume", one, two)
        with one.client(fed.keys[a]) as http:
            accepted = http.put(f"/v1/federations/{fed.id}/rounds/1/update", content=body)
        cancelled = _both(fed.id, "cancel", one, two)
        with two.client(fed.keys[b]) as http:
            refused_cancelled = http.put(
                f"/v1/federations/{fed.id}/rounds/1/update",
                content=_body(fed, 1, fed.info.global_version, 0.02),
            )
        statuses = []
        for server in (one, two):
            with server.client() as http:
                statuses.append(http.get(f"/v1/federations/{fed.id}").json()["status"])

    log = (tmp_path / "data" / "server.log").read_text()  # both processes append to it
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert seen_by_waiter == "paused"  # woken on the other process (LISTEN/NOTIFY)
    assert refused_paused.status_code == 409
    assert refused_paused.json()["error"] == "federation_paused"
    assert after_refusal == before
    assert [(r.status_code, r.json()["status"]) for r in resumed] == [(200, "running")] * 2
    assert accepted.status_code == 201, accepted.text
    assert [(r.status_code, r.json()["status"]) for r in cancelled] == [(200, "cancelled")] * 2
    for status in ("paused", "running", "cancelled"):  # one process made each transition
        assert log.count(f"federation {fed.id}: {status}") == 1, log
    assert refused_cancelled.status_code == 409
    assert refused_cancelled.json()["error"] == "federation_cancelled"
    assert statuses == ["cancelled", "cancelled"]
    rows = table_rows(pg_url)
    assert rows["counts"]["updates"] == 1
    assert [(r["number"], r["status"], r["received"]) for r in rows["rounds"]] == [(1, "open", 1)]
