"""Long-polling the current round wakes on a change, in this process or another one."""

from __future__ import annotations

import threading
import time

import pytest

WAIT_S = 30


@pytest.mark.parametrize("where", ["same_app", "other_app_same_database"])
def test_long_poll_returns_soon_after_an_update_with_the_change(
    start_app, new_federation, spec_with, delta, where
):
    app = start_app()
    fed = new_federation(app, spec_with(quorum=3), 2)
    uploader_app = app if where == "same_app" else start_app()
    c0, c1 = sorted(fed.keys)
    status = fed.status()
    body = delta(fed.info, 1, status["global_version"])

    def upload_later() -> None:
        time.sleep(0.5)
        with uploader_app.client(fed.keys[c1]) as c:
            c.put(f"/v1/federations/{fed.id}/rounds/1/update", content=body).raise_for_status()

    uploader = threading.Thread(target=upload_later)
    uploader.start()
    started = time.monotonic()
    with fed.as_client(c0) as c:
        r = c.get(
            f"/v1/federations/{fed.id}/rounds/current",
            params={"wait_s": WAIT_S, "revision": status["revision"]},
        )
    elapsed = time.monotonic() - started
    uploader.join()

    assert elapsed < WAIT_S
    assert r.json()["received"] == 1 and r.json()["revision"] != status["revision"]


def test_stale_revision_answers_at_once(federation):
    fed = federation(clients=1)
    status = fed.status()

    with fed.as_client(next(iter(fed.keys))) as c:
        r = c.get(
            f"/v1/federations/{fed.id}/rounds/current",
            params={"wait_s": WAIT_S, "revision": status["revision"] - 1},
            timeout=WAIT_S / 2,
        )

    assert r.status_code == 200 and r.json()["revision"] == status["revision"]


def test_wait_s_out_of_range_is_a_validation_error(federation):
    fed = federation(clients=1)

    with fed.app.client() as c:
        r = c.get(f"/v1/federations/{fed.id}/rounds/current", params={"wait_s": 600})

    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    assert "wait_s" in r.json()["detail"]


def test_after_round_waits_through_other_uploads_until_the_next_round(
    start_app, new_federation, spec_with, delta
):
    app = start_app()
    fed = new_federation(app, spec_with(quorum=3, min_updates=3, total=2), 4)
    waiter, *uploaders = sorted(fed.keys)
    status = fed.status()
    answers: list[dict] = []

    def wait_for_round_2() -> None:
        with fed.as_client(waiter) as c:
            r = c.get(
                f"/v1/federations/{fed.id}/rounds/current",
                params={"wait_s": WAIT_S, "after_round": 1},
                timeout=WAIT_S + 10,
            )
        answers.append(r.json())

    poll = threading.Thread(target=wait_for_round_2)
    poll.start()
    time.sleep(0.5)
    for i, cid in enumerate(uploaders):
        body = delta(fed.info, 1, status["global_version"])
        assert fed.upload(cid, 1, body).status_code == 201
        if i < len(uploaders) - 1:
            time.sleep(0.5)
            assert not answers, "an upload of another member ended the wait"
    poll.join(WAIT_S + 20)

    (answer,) = answers
    assert answer["round"] == 2 and answer["status"] == "open"


def test_after_round_answers_at_once_when_a_later_round_is_open(federation):
    fed = federation(clients=1)

    with fed.as_client(next(iter(fed.keys))) as c:
        r = c.get(
            f"/v1/federations/{fed.id}/rounds/current",
            params={"wait_s": WAIT_S, "after_round": 0},
            timeout=WAIT_S / 2,
        )

    assert r.status_code == 200 and r.json()["round"] == 1
