"""`fedtune-client train --devices 2` in a real federation: two CPU ranks on gloo, one member.

The two-device member and a one-device member both exit 0 after two closed rounds, each
round taking one update from each. That the round's training figures cover both ranks
(the all-reduce) is tested in tests/client_sdk/test_ddp.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from lab.local_federation import ServerProcess
from shared.spec import RoundsSpec, load_spec
from tests.e2e.test_federation_e2e import EXAMPLES

if TYPE_CHECKING:
    from tests.e2e.conftest import TrainOrgs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORGS = ["one-device", "two-devices"]


def test_a_member_training_on_two_devices_takes_part_like_any_other(
    server: ServerProcess, train_orgs: TrainOrgs
) -> None:
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    lt = spec.local_training.model_copy(update={"epochs": 1, "batch_size": 4})
    rounds = RoundsSpec(total=2, quorum=2, min_updates=2, deadline_s=600)
    admin = server.admin()
    info = admin.create_federation(spec.model_copy(update={"rounds": rounds, "local_training": lt}))

    train_orgs(
        admin,
        info.id,
        ORGS,
        spec.task.classes,
        per_class=4,
        extra={"two-devices": ["--devices", "2"]},
    )

    history = admin.list_rounds(info.id)
    assert [(r.round, r.status) for r in history] == [(1, "closed"), (2, "closed")]
    for record in history:
        assert sorted(p.name for p in record.participants) == ORGS
