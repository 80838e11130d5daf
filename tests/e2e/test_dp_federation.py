"""A differentially private federation through real processes.

A `fedtune-server serve` process and two `fedtune-client train` subprocesses run a
federation with central privacy at the service and DP-SGD on both clients. The round
history shows ε rising round by round, equal to Opacus's accountant called directly; the
federation completes on its own after 2 of its 5 rounds, before a third would take ε past
max_epsilon, and says so; every update reports its organisation's `dp_epsilon`; /metrics
reports the federation's ε; both clients exit 0.
"""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import pytest

from lab.local_federation import ServerProcess, client_command, quiet_env
from shared.privacy import CentralPrivacySpec, LocalDPSpec
from shared.spec import RoundsSpec, load_spec
from tests.accounting import rdp_epsilon
from tests.e2e.test_federation_e2e import EXAMPLES

if TYPE_CHECKING:
    from tests.e2e.conftest import TrainOrgs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORGS = ["org-a", "org-b"]
SIGMA, DELTA = 1.5, 1e-5


def test_a_private_federation_stops_at_its_budget_with_epsilon_rising_per_round(
    server: ServerProcess, train_orgs: TrainOrgs
) -> None:
    eps = [rdp_epsilon(SIGMA, [1.0] * k, DELTA) for k in (1, 2, 3)]
    privacy = CentralPrivacySpec(
        mechanism="central_gaussian",
        clip_norm=1.0,
        noise_multiplier=SIGMA,
        delta=DELTA,
        max_epsilon=(eps[1] + eps[2]) / 2,  # round 3 would pass it
    )
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    dp = LocalDPSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=DELTA)
    lt = spec.local_training.model_copy(
        update={"epochs": 1, "batch_size": 8, "max_steps": 2, "dp": dp}
    )
    spec = spec.model_validate(
        {
            **spec.model_dump(mode="json", exclude={"aggregation"}),
            "rounds": RoundsSpec(total=5, quorum=2, min_updates=2, deadline_s=600).model_dump(),
            "local_training": lt.model_dump(mode="json"),
            "privacy": privacy.model_dump(mode="json"),
        }
    )
    admin = server.admin()
    info = admin.create_federation(spec)
    assert info.spec.privacy == privacy and info.spec.aggregation.clip_norm == 1.0

    orgs = train_orgs(admin, info.id, ORGS, spec.task.classes)

    final = admin.get_federation(info.id)
    assert final.status == "completed" and final.completed_reason == "privacy_budget"
    assert final.current_round == 2
    rounds = admin.list_rounds(info.id)
    assert [r.round for r in rounds] == [1, 2]
    assert [r.status for r in rounds] == ["closed", "closed"]
    got = [r.epsilon for r in rounds]
    assert got == [pytest.approx(eps[0], rel=1e-9), pytest.approx(eps[1], rel=1e-9)]
    assert 0 < got[0] < got[1] <= privacy.max_epsilon  # type: ignore[operator]
    for r in rounds:
        assert sorted(p.name for p in r.participants) == ORGS
        for p in r.participants:
            assert p.metrics["dp_epsilon"] >= p.metrics["dp_epsilon_round"] > 0
        assert r.metrics["dp_epsilon"] > 0
    # round 2's organisations account for two rounds of local steps: more ε than round 1's
    assert rounds[1].metrics["dp_epsilon"] > rounds[0].metrics["dp_epsilon"]
    with server.http() as http:
        metrics = http.get("/metrics").text
    line = next(x for x in metrics.splitlines() if f'federation="{info.id}"' in x)
    assert line.startswith("fedtune_privacy_epsilon{")
    assert float(line.split()[-1]) == pytest.approx(eps[1], rel=1e-9)
    creds, _ = orgs[ORGS[0]]
    status = subprocess.run(
        client_command("status", "--credentials", str(creds), *server.transport_args()),
        env=quiet_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    (said,) = [x for x in status.stdout.splitlines() if x.startswith("privacy: ")]
    assert "central DP (noise x1.5 on the mean" in said and "DP-SGD on each client" in said
