"""Two service processes on one database race the quorum: exactly one aggregation."""

from __future__ import annotations

import threading

from sqlalchemy import select

from aggregator_service.storage.tables import rounds, state_versions


def _aggregated(app) -> float:
    for line in app.client().get("/metrics").text.splitlines():
        if line.startswith("fedtune_rounds_aggregated_total "):
            return float(line.split()[1])
    raise AssertionError("metric missing")


def test_two_apps_on_one_database_aggregate_a_round_exactly_once(
    start_app, new_federation, spec_with, delta
):
    one, two = start_app(), start_app()
    fed = new_federation(one, spec_with(quorum=3, min_updates=3, total=2), 4)
    base = fed.info.global_version
    cids = sorted(fed.keys)
    for cid in cids[:2]:
        assert fed.upload(cid, 1, delta(fed.info, 1, base)).status_code == 201
    gate = threading.Barrier(2)
    answers: dict[str, int] = {}

    def race(app, cid: str) -> None:
        body = delta(fed.info, 1, base, fill=0.2)
        gate.wait()
        with app.client(fed.keys[cid]) as c:
            answers[cid] = c.put(
                f"/v1/federations/{fed.id}/rounds/1/update", content=body
            ).status_code

    threads = [
        threading.Thread(target=race, args=(a, c))
        for a, c in zip((one, two), cids[2:], strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fed.wait_round(2)

    assert sorted(answers.values()) in ([201, 201], [201, 409])
    assert _aggregated(one) + _aggregated(two) == 1
    with one.core.db.read() as conn:
        closed = conn.execute(
            select(rounds.c.status, rounds.c.received).where(
                rounds.c.federation_id == fed.id, rounds.c.number == 1
            )
        ).one()
        versions = conn.execute(
            select(state_versions.c.round).where(state_versions.c.federation_id == fed.id)
        ).all()
    assert (
        closed.status == "closed" and closed.received == sum(s == 201 for s in answers.values()) + 2
    )
    assert sorted(v.round for v in versions) == [0, 1]
