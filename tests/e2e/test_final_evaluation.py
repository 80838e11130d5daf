"""The final model is evaluated: real `fedtune-client train` processes report it on completion.

Each round's update reports the accuracy of the version it trained from, so
only this report tells the final version's accuracy; the service keeps one per
client and version.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from client_sdk import FedTuneClient
from client_sdk._exceptions import ConflictError, NotFoundError
from client_sdk.credentials import load
from lab.local_federation import (
    ServerProcess,
    client_command,
    quiet_env,
    register,
)
from shared.spec import RoundsSpec, load_spec
from tests.e2e.test_federation_e2e import EXAMPLES

if TYPE_CHECKING:
    from tests.e2e.conftest import TrainOrgs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORGS = ["org-a", "org-b"]


def _as_client(server: ServerProcess, credentials: Path) -> FedTuneClient:
    return FedTuneClient(server.url, api_key=load(credentials).api_key, allow_http=True)


def test_each_client_reports_its_accuracy_of_the_final_version(
    server: ServerProcess, train_orgs: TrainOrgs
) -> None:
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    lt = spec.local_training.model_copy(update={"epochs": 1, "batch_size": 8, "max_steps": 2})
    rounds = RoundsSpec(total=1, quorum=2, min_updates=2, deadline_s=600)
    admin = server.admin()
    info = admin.create_federation(spec.model_copy(update={"rounds": rounds, "local_training": lt}))

    creds, _ = train_orgs(admin, info.id, ORGS, spec.task.classes)[ORGS[0]]

    final_version = admin.list_rounds(info.id)[-1].result_version
    assert final_version is not None
    evaluations = admin.list_evaluations(info.id)
    assert sorted(e.name for e in evaluations) == ORGS
    for e in evaluations:
        assert (e.version, e.round, e.final) == (final_version, 1, True)
        assert 0 <= e.val_accuracy <= 1 and e.val_examples > 0
    mine = _as_client(server, creds)
    assert [e.name for e in mine.list_evaluations(info.id)] == [ORGS[0]]  # only its own
    status = subprocess.run(
        client_command("status", "--credentials", str(creds), *server.transport_args()),
        env=quiet_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert f"final model (version {final_version[:12]}, round 1): val_accuracy=" in status.stdout


def test_a_report_is_idempotent_and_checked(server: ServerProcess, tmp_path: Path) -> None:
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    admin = server.admin()
    info = admin.create_federation(spec)
    creds = tmp_path / "credentials.json"
    register(server, admin.create_enrollment_token(info.id).token, "org-a", creds)
    client = _as_client(server, creds)

    first = client.report_evaluation(info.id, info.global_version, 0.5, 10)
    again = client.report_evaluation(info.id, info.global_version, 0.5, 10)

    assert first == again and (first.round, first.final) == (0, False)
    with pytest.raises(ConflictError):
        client.report_evaluation(info.id, info.global_version, 0.75, 10)
    with pytest.raises(NotFoundError):
        client.report_evaluation(info.id, "0" * 64, 0.5, 10)
    assert len(admin.list_evaluations(info.id)) == 1
