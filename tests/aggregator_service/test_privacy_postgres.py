"""Central privacy on PostgreSQL: ε recorded per round, the budget completes the federation,
and the ledger and completion rows are what the history and /metrics read.

Runs when FEDTUNE_TEST_POSTGRES_URL is set (see test_postgres.py).
"""

from __future__ import annotations

import pytest

from tests.aggregator_service.test_postgres import pg_server, pg_url, table_rows
from tests.aggregator_service.test_privacy import _dp_spec, _history, _opacus, _privacy

__all__ = ["pg_server", "pg_url"]  # fixtures


def test_the_privacy_budget_completes_a_federation_on_postgres(
    pg_url, start_app, new_federation, delta
):
    sigma = 1.5
    eps = [_opacus(sigma, [1.0] * k) for k in (1, 2)]
    privacy = _privacy(noise_multiplier=sigma, max_epsilon=(eps[0] + eps[1]) / 2)
    app = start_app(database_url=pg_url)
    fed = new_federation(app, _dp_spec(privacy, quorum=2, total=4), 2)
    for cid in sorted(fed.keys):
        assert fed.upload(cid, 1, delta(fed.info, 1, fed.info.global_version)).status_code == 201
    status = fed.wait_round(2)

    assert status["federation_status"] == "completed" and status["round"] == 1
    (row,) = _history(fed)
    assert row["epsilon"] == pytest.approx(eps[0], rel=1e-9)
    with app.client() as c:
        assert c.get(f"/v1/federations/{fed.id}").json()["completed_reason"] == "privacy_budget"
        line = next(x for x in c.get("/metrics").text.splitlines() if fed.id in x)
    assert float(line.split()[-1]) == pytest.approx(eps[0], rel=1e-9)
    counts = table_rows(pg_url)["counts"]
    assert (counts["privacy_ledger"], counts["completions"], counts["rounds"]) == (1, 1, 1)
