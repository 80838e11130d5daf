"""Central differential privacy at the service: the mechanism, the accountant and the budget.

The mechanism is checked on its own (clipping, and with a fixed seed the noise tensor by
tensor against the seeded draws; the system source, which has no reference, by statistics)
and through a real app over HTTP: the published state is the old one plus the clipped sum
over the quorum plus exactly the seeded noise; ε in the round history is Opacus's RDP
accountant called directly; the federation completes on its own, reason privacy_budget,
before a round would take ε past max_epsilon; /metrics reports it.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from sqlalchemy import inspect, text

from aggregator_service.aggregation import MemoryDeltas
from aggregator_service.services.privacy import _system_normal, noise_seed, noisy_mean
from shared.privacy import CentralPrivacySpec
from shared.spec import parse_spec
from tests.accounting import rdp_epsilon
from tests.aggregator_service.conftest import ADMIN_TOKEN, tiny_spec
from tests.aggregator_service.test_dashboard import signed_in
from tests.aggregator_service.test_postgres import table_rows
from tests.deltas import random_fill

DELTA = 1e-5


def _privacy(**changes: Any) -> dict[str, Any]:
    return {
        "mechanism": "central_gaussian",
        "clip_norm": 0.5,
        "noise_multiplier": 2.0,
        "delta": DELTA,
        "max_epsilon": 100.0,
        **changes,
    }


def test_noisy_mean_clips_every_update_and_adds_noise_of_std_sigma_c_over_the_quorum():
    sizes = {"a": (300, 400), "b": (80_000,)}
    old = {k: torch.zeros(s) for k, s in sizes.items()}
    big = {k: torch.ones(s) for k, s in sizes.items()}  # norm 447 > C: clipped to C
    small = {k: torch.full(s, 1e-4) for k, s in sizes.items()}  # norm 0.045 < C: as is
    deltas = MemoryDeltas([("c1", big, 500), ("c2", small, 1)])
    p = CentralPrivacySpec.model_validate(_privacy(clip_norm=2.0, noise_multiplier=1.5))
    quorum = 4
    out = noisy_mean(old, deltas, p, quorum, torch.Generator().manual_seed(7))

    n_big = math.sqrt(sum(t.numel() for t in big.values()))
    std = 1.5 * 2.0 / quorum
    g = torch.Generator().manual_seed(7)
    for name in sorted(sizes):  # noise is drawn tensor by tensor, in name order
        clipped_sum = big[name] * (2.0 / n_big) + small[name]  # example counts play no part
        residual = out[name] - clipped_sum / quorum
        torch.testing.assert_close(
            residual, torch.randn(sizes[name], generator=g) * std, rtol=1e-4, atol=1e-6
        )
    # the same seed gives the same bits; another seed other noise
    again = noisy_mean(old, deltas, p, quorum, torch.Generator().manual_seed(7))
    assert all(torch.equal(out[k], again[k]) for k in sizes)
    other = noisy_mean(old, deltas, p, quorum, torch.Generator().manual_seed(8))
    assert not torch.equal(out["b"], other["b"])


def test_system_noise_is_standard_normal_and_never_repeats():
    z = _system_normal(torch.Size([400, 501])).double()
    assert z.shape == (400, 501) and bool(torch.isfinite(z).all())
    assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())
    assert float(z.std()) == pytest.approx(1.0, rel=0.02)
    assert not torch.equal(z.float(), _system_normal(torch.Size([400, 501])))


def _dp_spec(privacy: dict[str, Any], **rounds: Any) -> dict[str, Any]:
    spec = tiny_spec(**rounds)
    spec["privacy"] = privacy
    return spec


def test_published_state_is_old_plus_clipped_sum_over_quorum_plus_the_seeded_noise(
    start_app, new_federation, delta
):
    privacy = _privacy(clip_norm=0.5, noise_multiplier=0.7, noise_source="seeded")
    spec_data = _dp_spec(privacy, quorum=3, min_updates=2, total=3)
    fed = new_federation(start_app(), spec_data, 3)
    spec = parse_spec(spec_data)
    base = fed.info.global_version
    old = fed.state()
    cids = sorted(fed.keys)
    for i, cid in enumerate(cids):
        body = delta(fed.info, 1, base, num_examples=10 ** (i + 1), fill=random_fill(i, 0.5 + i))
        assert fed.upload(cid, 1, body).status_code == 201
    fed.wait_round(2)
    new = fed.state()

    updates = [
        {k: random_fill(i, 0.5 + i)(k, t.shape) for k, t in old.items()} for i in range(len(cids))
    ]
    norms = [math.sqrt(sum(float(t.double().pow(2).sum()) for t in u.values())) for u in updates]
    g = torch.Generator().manual_seed(noise_seed(spec, 1))
    std = 0.7 * 0.5 / 3
    for name in sorted(old):
        clipped = sum(u[name] * min(1.0, 0.5 / n) for u, n in zip(updates, norms, strict=True))
        expected = old[name] + clipped / 3 + torch.randn(old[name].shape, generator=g) * std
        torch.testing.assert_close(new[name], expected, rtol=1e-5, atol=1e-6)
    assert max(norms) > 0.5  # the clip did bite


def test_epsilon_per_round_matches_opacus_and_the_budget_completes_the_federation(
    database_url, start_app, new_federation, delta
):
    sigma = 1.5
    eps = [rdp_epsilon(sigma, [1.0] * k, DELTA) for k in (1, 2, 3)]
    max_eps = (eps[1] + eps[2]) / 2  # round 3 would pass it: 2 of 5 rounds run
    fed = new_federation(
        start_app(database_url=database_url),
        _dp_spec(_privacy(noise_multiplier=sigma, max_epsilon=max_eps), quorum=2, total=5),
        2,
    )
    for rnd in (1, 2):
        version = fed.status()["global_version"]
        for cid in sorted(fed.keys):
            assert fed.upload(cid, rnd, delta(fed.info, rnd, version)).status_code == 201
        status = fed.wait_round(rnd + 1)
    assert status["federation_status"] == "completed" and status["round"] == 2

    rows = fed.history()
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["epsilon"] == pytest.approx(eps[0], rel=1e-9)
    assert rows[1]["epsilon"] == pytest.approx(eps[1], rel=1e-9)
    assert rows[0]["epsilon"] < rows[1]["epsilon"] <= max_eps
    with fed.app.client() as c:
        info = c.get(f"/v1/federations/{fed.id}").json()
        assert info["status"] == "completed" and info["completed_reason"] == "privacy_budget"
        late = fed.upload(sorted(fed.keys)[0], 3, delta(fed.info, 3, status["global_version"]))
        assert late.status_code == 409
        metrics = c.get("/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("fedtune_privacy_epsilon{"))
    assert f'federation="{fed.id}"' in line
    assert float(line.split()[-1]) == pytest.approx(eps[1], rel=1e-9)
    if database_url is not None:
        counts = table_rows(database_url)["counts"]
        assert (counts["privacy_ledger"], counts["completions"], counts["rounds"]) == (2, 1, 2)


def test_a_federation_without_privacy_completes_after_its_rounds_and_has_no_epsilon(
    start_app, new_federation, delta
):
    fed = new_federation(start_app(), tiny_spec(quorum=2, total=1), 2)
    for cid in sorted(fed.keys):
        assert fed.upload(cid, 1, delta(fed.info, 1, fed.info.global_version)).status_code == 201
    fed.wait_round(2)
    (row,) = fed.history()
    assert row["epsilon"] is None
    with fed.app.client() as c:
        info = c.get(f"/v1/federations/{fed.id}").json()
        assert info["completed_reason"] == "rounds"
        assert f'federation="{fed.id}"' not in c.get("/metrics").text


def test_amplification_accounts_participants_over_enrolled_clients(
    start_app, new_federation, delta
):
    sigma = 1.0
    privacy = _privacy(noise_multiplier=sigma, amplification=True, max_epsilon=50.0)
    fed = new_federation(start_app(), _dp_spec(privacy, quorum=2, min_updates=2, total=2), 4)
    for rnd in (1, 2):
        version = fed.status()["global_version"]
        for cid in sorted(fed.keys)[:2]:  # 2 of the 4 enrolled
            assert fed.upload(cid, rnd, delta(fed.info, rnd, version)).status_code == 201
        fed.wait_round(rnd + 1)
    rows = fed.history()
    assert rows[0]["epsilon"] == pytest.approx(rdp_epsilon(sigma, [0.5], DELTA), rel=1e-9)
    assert rows[1]["epsilon"] == pytest.approx(rdp_epsilon(sigma, [0.5, 0.5], DELTA), rel=1e-9)
    assert rows[1]["epsilon"] < rdp_epsilon(sigma, [1.0, 1.0], DELTA)
    with fed.app.client() as c:
        assert c.get(f"/v1/federations/{fed.id}").json()["completed_reason"] == "rounds"


def test_system_noise_source_publishes_a_finite_state_that_differs_from_the_seeded_one(
    start_app, new_federation, delta
):
    app = start_app()
    states = {}
    for source in ("seeded", "system"):
        spec = _dp_spec(_privacy(noise_source=source), quorum=2, total=1)
        fed = new_federation(app, spec, 2)
        for cid in sorted(fed.keys):
            assert (
                fed.upload(cid, 1, delta(fed.info, 1, fed.info.global_version)).status_code == 201
            )
        fed.wait_round(2)
        states[source] = fed.state()
    for name, t in states["system"].items():
        assert bool(torch.isfinite(t).all())
        assert not torch.equal(t, states["seeded"][name])


def test_a_database_created_before_the_privacy_tables_gains_them(start_app, tmp_path):
    app = start_app()
    engine = app.core.db._writer
    app.stop()
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE privacy_ledger"))
        conn.execute(text("DROP TABLE completions"))
    assert not {"privacy_ledger", "completions"} & set(inspect(engine).get_table_names())
    app = start_app()
    assert {"privacy_ledger", "completions"} <= set(inspect(app.core.db._writer).get_table_names())


def test_the_dashboard_shows_epsilon_per_round_and_the_current_one(
    start_app, new_federation, delta
):
    app = start_app()
    sigma = 2.0
    private = new_federation(app, _dp_spec(_privacy(noise_multiplier=sigma), quorum=2), 2)
    plain = new_federation(app, tiny_spec(quorum=2), 2)
    for fed in (private, plain):
        for cid in sorted(fed.keys):
            body = delta(fed.info, 1, fed.info.global_version)
            assert fed.upload(cid, 1, body).status_code == 201
        fed.wait_round(2)
    eps = rdp_epsilon(sigma, [1.0], DELTA)

    with signed_in(app.url, ADMIN_TOKEN) as c:
        page = c.get(f"/dashboard/federations/{private.id}").text
        live = c.get(f"/dashboard/federations/{private.id}/live").json()
        plain_page = c.get(f"/dashboard/federations/{plain.id}").text
        plain_live = c.get(f"/dashboard/federations/{plain.id}/live").json()

    assert live["epsilon"] == pytest.approx(eps, rel=1e-9) and live["max_epsilon"] == 100.0
    assert [h["epsilon"] for h in live["history"]] == [pytest.approx(eps, rel=1e-9), None]
    assert "Privacy ε" in page and "<th>ε</th>" in page
    assert page.count(f"{eps:.4f}") == 2  # the header and round 1's row
    assert plain_live["epsilon"] is None and plain_live["max_epsilon"] is None
    assert "Privacy ε" not in plain_page and "<th>ε</th>" not in plain_page
