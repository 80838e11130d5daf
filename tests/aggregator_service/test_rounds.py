"""The round state machine over real HTTP: quorum, deadline, completion."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.deltas import random_fill


def _unbounded(**rounds: object) -> dict:
    """The tiny spec with the weight cap and the default clip off: plain example weighting."""
    from tests.aggregator_service.conftest import tiny_spec

    spec = tiny_spec(**rounds)
    spec["aggregation"] = {"max_weight_share": 1.0, "clip_norm": None}
    return spec


def test_quorum_of_three_gives_old_plus_example_weighted_mean(start_app, new_federation, delta):
    fed = new_federation(start_app(), _unbounded(quorum=3, min_updates=2, total=2), 3)
    base = fed.info.global_version
    old = fed.state()
    examples = {cid: n for cid, n in zip(sorted(fed.keys), (10, 30, 60), strict=True)}
    fills = {cid: random_fill(i) for i, cid in enumerate(sorted(fed.keys))}

    for cid in reversed(sorted(fed.keys)):  # arrival order must not matter
        r = fed.upload(cid, 1, delta(fed.info, 1, base, examples[cid], fills[cid]))
        assert r.status_code == 201, r.text
    status = fed.wait_round(2)

    new = fed.state()
    total = sum(examples.values())
    for name, t in old.items():
        mean = sum(fills[cid](name, t.shape) * (examples[cid] / total) for cid in sorted(fed.keys))
        torch.testing.assert_close(new[name], t + mean, rtol=1e-6, atol=1e-7)
    assert status["round"] == 2 and status["status"] == "open"
    assert status["global_version"] != base and status["received"] == 0
    (r1, r2) = fed.app.client().get(f"/v1/federations/{fed.id}/rounds").json()
    assert (r1["status"], r1["closed_by"], r1["result_version"]) == (
        "closed",
        "quorum",
        status["global_version"],
    )
    assert sorted(p["client_id"] for p in r1["participants"]) == sorted(fed.keys)
    assert r2["status"] == "open" and r2["base_version"] == status["global_version"]


def test_deadline_closes_round_once_min_updates_have_arrived(federation, delta):
    fed = federation(clients=3, quorum=3, min_updates=2, total=2, deadline_s=1.0)
    c0, c1, _ = sorted(fed.keys)
    base = fed.info.global_version
    assert fed.upload(c0, 1, delta(fed.info, 1, base)).status_code == 201
    with fed.app.client() as c:  # hold past the deadline: one update is not enough
        held = c.get(
            f"/v1/federations/{fed.id}/rounds/current",
            params={"wait_s": 2.5, "revision": fed.status()["revision"]},
        ).json()
    assert held["round"] == 1 and held["status"] == "open" and held["received"] == 1

    assert fed.upload(c1, 1, delta(fed.info, 1, base)).status_code == 201
    status = fed.wait_round(2)

    assert status["round"] == 2
    first = fed.history()[0]
    assert first["closed_by"] == "deadline" and len(first["participants"]) == 2


def test_federation_completes_after_the_last_round(federation, delta):
    fed = federation(clients=1, quorum=1, min_updates=1, total=2)
    (cid,) = fed.keys
    version = fed.info.global_version
    for rnd in (1, 2):
        body = delta(fed.info, rnd, version, metrics={"train_loss": 1.0 / rnd})
        assert fed.upload(cid, rnd, body).status_code == 201
        version = fed.wait_round(rnd + 1)["global_version"]

    status = fed.status()
    late = fed.upload(cid, 3, delta(fed.info, 3, version))

    assert status["federation_status"] == "completed"
    assert (status["round"], status["status"], status["total_rounds"]) == (2, "closed", 2)
    assert status["global_version"] == fed.history()[-1]["result_version"] == version
    assert fed.app.client().get(f"/v1/federations/{fed.id}").json()["status"] == "completed"
    assert late.status_code == 409 and late.json()["error"] == "federation_completed"
    assert [h["metrics"]["train_loss"] for h in fed.history()] == [1.0, 0.5]


def test_update_while_the_round_aggregates_is_refused_with_the_round(
    federation, delta, before_aggregation
):
    release = threading.Event()
    before_aggregation.append(lambda _fid, _number: release.wait(30))
    fed = federation(clients=3, quorum=2, min_updates=2)
    c0, c1, c2 = sorted(fed.keys)
    base = fed.info.global_version
    for cid in (c0, c1):
        assert fed.upload(cid, 1, delta(fed.info, 1, base)).status_code == 201

    late = fed.upload(c2, 1, delta(fed.info, 1, base))
    release.set()

    body = late.json()
    assert late.status_code == 409 and body["error"] == "round_closed"
    assert body["detail"] == "round 1 is aggregating and no longer accepts updates"
    assert (body["round"]["round"], body["round"]["status"]) == (1, "aggregating")
    assert fed.wait_round(2)["round"] == 2


def test_round_left_aggregating_is_aggregated_once_at_startup(start_app, new_federation, delta):
    from sqlalchemy import select, update

    from aggregator_service.storage.tables import rounds, state_versions

    fed = new_federation(start_app(), _unbounded(quorum=3, min_updates=2, total=2), 3)
    c0, c1, _ = sorted(fed.keys)
    base = fed.info.global_version
    old = fed.state()
    assert fed.upload(c0, 1, delta(fed.info, 1, base, 10, 0.1)).status_code == 201
    assert fed.upload(c1, 1, delta(fed.info, 1, base, 30, 0.5)).status_code == 201
    fed.app.stop()
    with fed.app.core.db.write() as conn:  # as if the process died mid-aggregation
        conn.execute(
            update(rounds)
            .where(rounds.c.federation_id == fed.id, rounds.c.number == 1)
            .values(status="aggregating", closed_by="quorum")
        )

    fed.app = start_app()
    fed.wait_round(2)

    new = fed.state()
    for name, t in old.items():
        torch.testing.assert_close(new[name], t + 0.25 * 0.1 + 0.75 * 0.5, rtol=1e-6, atol=1e-7)
    with fed.app.core.db.read() as conn:
        versions = conn.execute(
            select(state_versions.c.round).where(state_versions.c.federation_id == fed.id)
        ).all()
    assert sorted(v.round for v in versions) == [0, 1]
    assert "fedtune_rounds_aggregated_total 1.0" in fed.app.client().get("/metrics").text


def test_running_app_takes_over_an_aggregation_whose_lease_expired(start_app, federation, delta):
    import time

    from sqlalchemy import select

    from aggregator_service.storage.tables import aggregation_attempts, rounds

    fed = federation(clients=3, quorum=3, min_updates=2, app=start_app(lease_s=1.0))
    c0, c1, _ = sorted(fed.keys)
    for cid in (c0, c1):
        assert fed.upload(cid, 1, delta(fed.info, 1, fed.info.global_version)).status_code == 201
    started = time.time() - 60
    # a replica on another host claimed it, then died
    _held_elsewhere(
        fed.app.core, fed.id, 1.0, 1, closed_by="quorum", aggregation_started_at=started
    )

    status = fed.wait_round(2)

    assert status["round"] == 2 and fed.history()[0]["status"] == "closed"
    with fed.app.core.db.read() as conn:
        real_start = conn.execute(
            select(rounds.c.aggregation_started_at).where(
                rounds.c.federation_id == fed.id, rounds.c.number == 1
            )
        ).scalar_one()
        attempts = conn.execute(
            select(aggregation_attempts.c.number, aggregation_attempts.c.outcome).where(
                aggregation_attempts.c.federation_id == fed.id
            )
        ).all()
    assert real_start == started  # the takeover keeps the real start
    assert [(a.number, a.outcome) for a in attempts] == [(2, "closed")]


def test_server_optimiser_state_survives_a_restart_bit_for_bit(
    tmp_path, start_app, new_federation, spec_with, delta
):
    from sqlalchemy import select

    from aggregator_service.storage.tables import state_versions

    spec = {**spec_with(quorum=1, min_updates=1, total=2), "aggregation": {"strategy": "fedadam"}}

    def run(data_dir, restart: bool) -> str:
        app = start_app(data_dir=data_dir)
        fed = new_federation(app, spec, 1)
        (cid,) = fed.keys
        version = fed.info.global_version
        for rnd in (1, 2):
            if rnd == 2 and restart:
                fed.app.stop()
                fed.app = start_app(data_dir=data_dir)
            body = delta(fed.info, rnd, version, 10, random_fill(rnd))
            assert fed.upload(cid, rnd, body).status_code == 201
            version = fed.wait_round(rnd + 1)["global_version"]
        with fed.app.core.db.read() as conn:
            stored = conn.execute(
                select(state_versions.c.server_state_digest).where(
                    state_versions.c.federation_id == fed.id, state_versions.c.round > 0
                )
            ).all()
        assert len(stored) == 2 and all(row.server_state_digest for row in stored)
        return str(version)

    assert run(tmp_path / "straight", False) == run(tmp_path / "restarted", True)


def test_a_reopened_round_waits_for_a_new_update_before_the_sweepers_close_it_again(
    start_app, federation, delta
):
    import time

    from sqlalchemy import insert, update

    from aggregator_service.services.rounds import due_rounds, quorum_rounds
    from aggregator_service.storage.tables import aggregation_attempts, rounds, updates

    app = start_app(deadline_check_s=3600.0)  # one sweep at start-up, none while we look
    fed = federation(clients=3, quorum=3, min_updates=2, app=app)
    c0, c1, _ = sorted(fed.keys)
    for cid in (c0, c1):
        assert fed.upload(cid, 1, delta(fed.info, 1, fed.info.global_version)).status_code == 201
    core = app.core
    reopened_at = time.time() + 1
    with core.db.write() as conn:  # as after an aggregation that found no finite subset
        conn.execute(
            update(rounds)
            .where(rounds.c.federation_id == fed.id, rounds.c.number == 1)
            .values(received=3, deadline_at=time.time() - 1)
        )
        conn.execute(
            insert(aggregation_attempts).values(
                federation_id=fed.id,
                round=1,
                number=1,
                owner="gone:1:x",
                started_at=reopened_at - 1,
                ended_at=reopened_at,
                outcome="reopened",
            )
        )

    assert (fed.id, 1) not in quorum_rounds(core)
    assert (fed.id, 1) not in due_rounds(core)

    with core.db.write() as conn:  # a new update arrives after the reopening
        conn.execute(
            update(updates)
            .where(updates.c.federation_id == fed.id, updates.c.client_id == c1)
            .values(received_at=reopened_at + 1)
        )
    assert (fed.id, 1) in quorum_rounds(core)
    assert (fed.id, 1) in due_rounds(core)


def _held_elsewhere(core, fid: str, lease_s: float, attempts: int, **round_values) -> None:
    """Round 1 of `fid` is aggregating under a lease that a replica on another host holds for
    `lease_s` more seconds, in its `attempts`-th attempt."""
    import time

    from sqlalchemy import insert, update

    from aggregator_service.storage.tables import round_leases, rounds

    with core.db.write() as conn:
        conn.execute(
            update(rounds)
            .where(rounds.c.federation_id == fid, rounds.c.number == 1)
            .values(status="aggregating", **round_values)
        )
        conn.execute(
            insert(round_leases).values(
                federation_id=fid,
                round=1,
                owner="another-host:7:0badc0de",
                expires_at=time.time() + lease_s,
                retry_at=0.0,
                attempts=attempts,
            )
        )


def _truncated(spec: str) -> str:
    return spec[: len(spec) // 2]


def _rounds_as_text(spec: str) -> str:
    import json

    return json.dumps({**json.loads(spec), "rounds": "three of them"})


def _break_spec(core, fid: str, breaking) -> None:
    """Store a spec that no longer reads as one (written past the API, as a bad migration or
    a hand edit would)."""
    from sqlalchemy import select, update

    from aggregator_service.storage.tables import federations

    with core.db.write() as conn:
        stored = conn.execute(select(federations.c.spec).where(federations.c.id == fid)).scalar()
        conn.execute(
            update(federations).where(federations.c.id == fid).values(spec=breaking(stored))
        )


@pytest.mark.parametrize("breaking", [_truncated, _rounds_as_text], ids=["not_json", "wrong_type"])
def test_a_federation_whose_spec_cannot_be_read_holds_up_no_other_federations_round(
    start_app, new_federation, delta, breaking
):
    from sqlalchemy import update

    from aggregator_service.storage.tables import rounds

    app = start_app()
    fed = new_federation(app, _unbounded(quorum=3, min_updates=2, total=2), 3)
    broken = new_federation(app, _unbounded(quorum=3, min_updates=2, total=2), 0)
    for cid in sorted(fed.keys)[:2]:
        assert fed.upload(cid, 1, delta(fed.info, 1, fed.info.global_version)).status_code == 201
    app.stop()
    with app.core.db.write() as conn:  # its aggregation died with the process: nobody holds it
        conn.execute(
            update(rounds)
            .where(rounds.c.federation_id == fed.id, rounds.c.number == 1)
            .values(status="aggregating", closed_by="quorum")
        )
    _break_spec(app.core, broken.id, breaking)

    fed.app = start_app()  # a replica that has not read the broken spec before

    assert fed.wait_round(2)["round"] == 2
    assert fed.history()[0]["status"] == "closed"


def test_a_federation_whose_spec_cannot_be_read_is_logged_once_not_every_sweep(
    start_app, new_federation, caplog
):
    import logging
    import time

    app = start_app()
    broken = new_federation(app, _unbounded(), 0)
    app.stop()
    _break_spec(app.core, broken.id, _truncated)

    with caplog.at_level(logging.ERROR, logger="fedtune.server"):
        start_app(deadline_check_s=0.05)
        time.sleep(1.0)  # some twenty sweeps

    logged = [
        r for r in caplog.records if r.levelno >= logging.ERROR and broken.id in r.getMessage()
    ]
    assert len(logged) == 1 and "round sweep" in logged[0].getMessage()


def test_a_replica_that_lost_its_lease_does_not_reopen_the_round(start_app, new_federation, delta):

    from sqlalchemy import select

    from aggregator_service.services.rounds import aggregate_round
    from aggregator_service.storage.tables import rounds

    spec = _unbounded(quorum=2, min_updates=1)
    spec["aggregation"] = {**spec["aggregation"], "strategy": "fedadam", "max_abs_value": None}
    app = start_app(deadline_check_s=3600.0)  # one sweep at start-up, none while we look
    fed = new_federation(app, spec, 2)
    huge = delta(fed.info, 1, fed.info.global_version, fill=3e38)  # squared: no finite state
    assert fed.upload(sorted(fed.keys)[0], 1, huge).status_code == 201
    _held_elsewhere(app.core, fed.id, 600, 2, closed_by="deadline")  # taken over meanwhile

    outcome = aggregate_round(app.core, fed.id, 1, owner="this-host:1:lost")

    with app.core.db.read() as conn:
        status = conn.execute(
            select(rounds.c.status).where(rounds.c.federation_id == fed.id, rounds.c.number == 1)
        ).scalar_one()
    assert (outcome, status) == ("superseded", "aggregating")
