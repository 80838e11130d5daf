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
