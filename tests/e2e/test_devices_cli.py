"""`fedtune-client train --devices 2` in a real federation: two CPU ranks on gloo, one member.

Rank 0 alone talks to the server and uploads one delta a round; both ranks train
on their half of every global batch, and the round's training figures cover both
halves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.local_federation import ServerProcess, register, start_client, train_args
from shared.spec import RoundsSpec, load_spec
from tests.e2e.test_federation_e2e import EXAMPLES
from tests.images import write_image_folder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_member_training_on_two_devices_takes_part_like_any_other(
    server: ServerProcess, tmp_path: Path
) -> None:
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    lt = spec.local_training.model_copy(update={"epochs": 1, "batch_size": 4})
    rounds = RoundsSpec(total=2, quorum=2, min_updates=2, deadline_s=600)
    admin = server.admin()
    info = admin.create_federation(spec.model_copy(update={"rounds": rounds, "local_training": lt}))
    procs = []
    for i, (org, extra) in enumerate([("two-devices", ["--devices", "2"]), ("one-device", [])]):
        creds = tmp_path / org / "credentials.json"
        register(server, admin.create_enrollment_token(info.id).token, org, creds)
        data = write_image_folder(tmp_path / org / "data", spec.task.classes, 4, seed=i)
        args = [*train_args(server, creds, data, tmp_path / org / "work"), *extra]
        procs.append(start_client(org, args, tmp_path / org / "client.log"))

    codes = [p.wait(timeout=600) for p in procs]

    assert codes == [0, 0], "\n".join(p.output()[-3000:] for p in procs)
    history = admin.list_rounds(info.id)
    assert [(r.round, r.status) for r in history] == [(1, "closed"), (2, "closed")]
    for record in history:
        by_name = {p.name: p for p in record.participants}
        assert sorted(by_name) == ["one-device", "two-devices"]
        # Both hold as many images: rank 0 reports the whole split, not its half of it.
        assert by_name["two-devices"].num_examples == by_name["one-device"].num_examples
        assert 0 <= by_name["two-devices"].metrics["train_accuracy"] <= 1
    assert procs[0].output().count("completed") == 1  # one rank reports, not two
