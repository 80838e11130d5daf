"""Pausing, resuming and cancelling a federation over real HTTP, and the read operations added
beside them: the admin's federation list, one round's record, the final model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from aggregator_service.storage.tables import rounds, updates


def _post(fed: Any, action: str, token: str | None = None) -> Any:
    with fed.app.client(token) if token else fed.app.client() as c:
        return c.post(f"/v1/federations/{fed.id}/{action}")


def _stored(fed: Any) -> tuple[int, list[str]]:
    """Update rows and blob files: what an accepted update would add to."""
    core = fed.app.core
    with core.db.read() as conn:
        count = conn.execute(select(func.count()).select_from(updates)).scalar_one()
    return count, sorted(str(p) for p in core.blobs.root.rglob("*") if p.is_file())


def _upload_interrupted(fed: Any, cid: str, body: bytes, interrupt: Callable[[], None]) -> Any:
    """Upload `body` as `cid` to round 1, running `interrupt` once half of it has been sent."""
    half_sent, interrupted = threading.Event(), threading.Event()

    def stream() -> Any:
        yield body[: len(body) // 2]
        half_sent.set()
        assert interrupted.wait(30)
        yield body[len(body) // 2 :]

    with ThreadPoolExecutor(1) as pool, fed.as_client(cid) as c:
        upload = pool.submit(
            c.put,
            f"/v1/federations/{fed.id}/rounds/1/update",
            content=stream(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(body))},
        )
        assert half_sent.wait(30)
        interrupt()
        interrupted.set()
        return upload.result(timeout=60)


def _deadline(fed: Any) -> float:
    with fed.app.core.db.read() as conn:
        value: float = conn.execute(
            select(rounds.c.deadline_at).where(rounds.c.federation_id == fed.id)
        ).scalar_one()
    return value


# -- pause ----------------------------------------------------------------------------------


def test_paused_federation_refuses_updates_and_stores_nothing(federation, delta):
    fed = federation(clients=2, quorum=2)
    cid = sorted(fed.keys)[0]
    before = _stored(fed)

    r = _post(fed, "pause")
    refused = fed.upload(cid, 1, delta(fed.info, 1, fed.info.global_version))

    assert r.status_code == 200 and r.json()["status"] == "paused"
    assert refused.status_code == 409
    assert refused.json()["error"] == "federation_paused"
    assert "resumes" in refused.json()["detail"]
    assert _stored(fed) == before
    status = fed.status()
    assert (status["federation_status"], status["received"]) == ("paused", 0)


def test_resumed_federation_accepts_the_update_it_refused_while_paused(federation, delta):
    fed = federation(clients=2, quorum=2)
    cid = sorted(fed.keys)[0]
    body = delta(fed.info, 1, fed.info.global_version)
    _post(fed, "pause")
    assert fed.upload(cid, 1, body).status_code == 409

    r = _post(fed, "resume")
    accepted = fed.upload(cid, 1, body)

    assert r.status_code == 200 and r.json()["status"] == "running"
    assert accepted.status_code == 201, accepted.text
    assert fed.status()["received"] == 1


def test_pausing_twice_or_resuming_a_running_federation_changes_nothing(federation):
    fed = federation(clients=1)
    revision = fed.status()["revision"]

    resumed = _post(fed, "resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    assert fed.status()["revision"] == revision
    assert _post(fed, "pause").status_code == 200
    paused_revision = fed.status()["revision"]
    again = _post(fed, "pause")

    assert again.status_code == 200 and again.json()["status"] == "paused"
    assert fed.status()["revision"] == paused_revision != revision


def test_a_pause_that_arrives_while_an_upload_streams_refuses_it_and_stores_nothing(
    federation, delta
):
    """The upload was let in (the federation was running when it began); the pause commits
    while its body is still arriving. The upload ends with the pause's 409 and leaves no row,
    no blob and no spool file; after the resume the same bytes are accepted."""
    fed = federation(clients=2, quorum=2)
    cid = sorted(fed.keys)[0]
    body = delta(fed.info, 1, fed.info.global_version)
    before = _stored(fed)

    def pause() -> None:
        assert _post(fed, "pause").json()["status"] == "paused"

    refused = _upload_interrupted(fed, cid, body, pause)

    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "federation_paused"
    assert _stored(fed) == before
    assert fed.status()["received"] == 0
    _post(fed, "resume")
    assert fed.upload(cid, 1, body).status_code == 201


def test_a_client_revoked_while_its_upload_streams_is_refused_and_nothing_is_stored(
    federation, delta
):
    """The key was valid when the upload began; the revocation commits while its body is still
    arriving. The upload ends with the revoked key's 401 and leaves no row, no blob and no
    spool file, and counts toward no quorum."""
    fed = federation(clients=2, quorum=2)
    cid = sorted(fed.keys)[0]
    before = _stored(fed)

    def revoke() -> None:
        with fed.app.client() as admin:
            assert admin.delete(f"/v1/clients/{cid}").json()["revoked"] is True

    refused = _upload_interrupted(fed, cid, delta(fed.info, 1, fed.info.global_version), revoke)

    assert refused.status_code == 401, refused.text
    assert refused.json()["error"] == "unauthorized"
    assert refused.json()["detail"] == f"client {cid} has been revoked"
    assert _stored(fed) == before
    assert fed.status()["received"] == 0


def test_no_deadline_closes_a_round_of_a_paused_federation_and_resume_restarts_it(
    federation, delta
):
    fed = federation(clients=2, quorum=2, min_updates=1, deadline_s=1.0)
    cid = sorted(fed.keys)[0]
    assert fed.upload(cid, 1, delta(fed.info, 1, fed.info.global_version)).status_code == 201
    _post(fed, "pause")
    first_deadline = _deadline(fed)
    while time.time() < first_deadline + 0.5:  # past the deadline, several sweeps later
        time.sleep(0.1)

    paused = fed.status()
    resumed_at = time.time()
    _post(fed, "resume")

    assert (paused["round"], paused["status"]) == (1, "open")
    assert _deadline(fed) >= resumed_at + 1.0
    assert fed.wait_round(2)["round"] == 2  # the restarted deadline closes it with min_updates
    with fed.app.client() as c:
        first = c.get(f"/v1/federations/{fed.id}/rounds/1").json()
    assert first["closed_by"] == "deadline"


def test_a_long_poll_wakes_when_the_federation_is_paused(federation):
    fed = federation(clients=1)
    (cid,) = fed.keys
    status = fed.status()
    with ThreadPoolExecutor(1) as pool, fed.as_client(cid) as c:
        waiting = pool.submit(
            c.get,
            f"/v1/federations/{fed.id}/rounds/current",
            params={"wait_s": 30, "revision": status["revision"]},
        )
        time.sleep(0.3)  # the poll is held by now (it would return at once otherwise too)
        _post(fed, "pause")
        woken = waiting.result(timeout=30).json()

    assert woken["federation_status"] == "paused"
    assert woken["revision"] != status["revision"]


def test_a_client_may_not_pause_resume_or_cancel(federation):
    fed = federation(clients=1)
    (cid,) = fed.keys

    answers = [_post(fed, action, fed.keys[cid]) for action in ("pause", "resume", "cancel")]

    assert [a.status_code for a in answers] == [403, 403, 403]
    assert fed.status()["federation_status"] == "running"


def test_lifecycle_of_an_unknown_federation_is_404(start_app):
    app = start_app()
    with app.client() as c:
        r = c.post("/v1/federations/fed_nosuch/pause")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


# -- cancel ---------------------------------------------------------------------------------


def test_cancelled_federation_refuses_updates_and_stays_cancelled(federation, delta):
    fed = federation(clients=2, quorum=2)
    cid = sorted(fed.keys)[0]
    before = _stored(fed)

    r = _post(fed, "cancel")
    refused = fed.upload(cid, 1, delta(fed.info, 1, fed.info.global_version))
    again = _post(fed, "cancel")
    pause = _post(fed, "pause")
    resume = _post(fed, "resume")

    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert refused.status_code == 409 and refused.json()["error"] == "federation_cancelled"
    assert _stored(fed) == before
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    for answer in (pause, resume):
        assert answer.status_code == 409 and answer.json()["error"] == "federation_cancelled"
    assert fed.status()["federation_status"] == "cancelled"


def test_a_paused_federation_can_be_cancelled(federation):
    fed = federation(clients=1)
    _post(fed, "pause")

    r = _post(fed, "cancel")

    assert r.status_code == 200 and r.json()["status"] == "cancelled"


def test_a_round_aggregating_when_cancelled_closes_but_no_round_opens(
    federation, delta, before_aggregation
):
    fed = federation(clients=2, quorum=2, total=3)
    release, started = threading.Event(), threading.Event()

    def hold(_fid: str, _round: int) -> None:
        started.set()
        release.wait(30)

    before_aggregation.append(hold)
    for cid in sorted(fed.keys):
        assert fed.upload(cid, 1, delta(fed.info, 1, fed.info.global_version)).status_code == 201
    assert started.wait(30)
    cancelled = _post(fed, "cancel")
    release.set()
    with fed.app.client() as c:
        for _ in range(300):
            record = c.get(f"/v1/federations/{fed.id}/rounds/1").json()
            if record["status"] == "closed":
                break
            time.sleep(0.1)
        history = c.get(f"/v1/federations/{fed.id}/rounds").json()

    assert cancelled.status_code == 200
    assert record["status"] == "closed"
    assert [h["round"] for h in history] == [1]
    status = fed.status()
    assert (status["federation_status"], status["round"]) == ("cancelled", 1)


def test_a_waiter_for_the_next_round_wakes_when_the_federation_is_cancelled(federation):
    fed = federation(clients=1)
    (cid,) = fed.keys
    with ThreadPoolExecutor(1) as pool, fed.as_client(cid) as c:
        waiting = pool.submit(
            c.get,
            f"/v1/federations/{fed.id}/rounds/current",
            params={"wait_s": 30, "after_round": 1},
        )
        time.sleep(0.3)
        _post(fed, "cancel")
        woken = waiting.result(timeout=30).json()

    assert woken["federation_status"] == "cancelled" and woken["round"] == 1


# -- completed ------------------------------------------------------------------------------


@pytest.fixture
def completed(federation, delta) -> Any:
    fed = federation(clients=1, quorum=1, min_updates=1, total=1)
    (cid,) = fed.keys
    assert fed.upload(cid, 1, delta(fed.info, 1, fed.info.global_version)).status_code == 201
    status = fed.wait_round(2)
    assert status["federation_status"] == "completed"
    return fed


def test_a_completed_federation_cannot_be_paused_resumed_or_cancelled(completed):
    answers = [_post(completed, action) for action in ("pause", "resume", "cancel")]

    assert [a.status_code for a in answers] == [409, 409, 409]
    assert {a.json()["error"] for a in answers} == {"federation_completed"}
    assert completed.status()["federation_status"] == "completed"


def test_the_final_model_is_the_last_global_state_for_members_and_admin(completed):
    (cid,) = completed.keys
    with completed.app.client() as c:
        state = c.get(f"/v1/federations/{completed.id}/state")
        admin = c.get(f"/v1/federations/{completed.id}/model")
    with completed.as_client(cid) as c:
        member = c.get(f"/v1/federations/{completed.id}/model")

    assert admin.status_code == member.status_code == 200
    assert admin.content == member.content == state.content
    assert admin.headers["etag"] == state.headers["etag"]
    assert admin.headers["x-fedtune-round"] == "1"


def test_the_final_model_before_completion_is_409_not_completed(federation):
    fed = federation(clients=1)
    with fed.app.client() as c:
        r = c.get(f"/v1/federations/{fed.id}/model")

    assert r.status_code == 409 and r.json()["error"] == "not_completed"


def test_a_non_member_may_not_download_the_final_model(completed, new_federation):
    other = new_federation(completed.app, _spec(completed), 1)
    (outsider,) = other.keys
    with other.as_client(outsider) as c:
        r = c.get(f"/v1/federations/{completed.id}/model")

    assert r.status_code == 403


def _spec(fed: Any) -> dict[str, Any]:
    return fed.info.spec.model_dump(mode="json")


# -- list and one round ---------------------------------------------------------------------


def test_the_admin_lists_every_federation_oldest_first(start_app, new_federation, spec_with):
    app = start_app()
    first = new_federation(app, spec_with(total=3), 1)
    second = new_federation(app, spec_with(total=5), 1)
    _post(second, "pause")

    with app.client() as c:
        listed = c.get("/v1/federations").json()

    assert [(f["id"], f["name"], f["status"], f["current_round"], f["total_rounds"])
            for f in listed] == [
        (first.id, first.info.name, "running", 1, 3),
        (second.id, second.info.name, "paused", 1, 5),
    ]  # fmt: skip
    assert all(f["created_at"] for f in listed)


def test_a_client_may_not_list_federations(federation):
    fed = federation(clients=1)
    (cid,) = fed.keys
    with fed.as_client(cid) as c:
        r = c.get("/v1/federations")
    assert r.status_code == 403


def test_one_round_shows_the_admin_everyone_and_a_client_itself(federation, delta):
    fed = federation(clients=2, quorum=3)
    a, b = sorted(fed.keys)
    for cid, n in ((a, 10), (b, 30)):
        assert fed.upload(cid, 1, delta(fed.info, 1, fed.info.global_version, n)).status_code == 201

    with fed.app.client() as c:
        admin = c.get(f"/v1/federations/{fed.id}/rounds/1").json()
        history = c.get(f"/v1/federations/{fed.id}/rounds").json()
    with fed.as_client(a) as c:
        mine = c.get(f"/v1/federations/{fed.id}/rounds/1").json()

    assert admin == history[0]
    assert sorted(p["client_id"] for p in admin["participants"]) == [a, b]
    assert [p["client_id"] for p in mine["participants"]] == [a]
    assert mine["participant_count"] == 2 and mine["bytes_in"] == admin["bytes_in"]


@pytest.mark.parametrize(("number", "status"), [("2", 404), (str(2**40), 404), ("0", 422)])
def test_a_round_that_does_not_exist_is_refused(federation, number, status):
    fed = federation(clients=1)
    with fed.app.client() as c:
        r = c.get(f"/v1/federations/{fed.id}/rounds/{number}")
    assert r.status_code == status, r.text
