"""One member tries to destroy the global model of a real federation, and cannot.

A real aggregator process, two honest organisations training with
`fedtune-client`, and a third enrolled organisation that, every round, claims
an enormous `num_examples` and uploads values near float32's maximum (refused:
`aggregation.max_abs_value`), then values just inside the magnitude bound but
with a huge norm (accepted, then weight-capped and norm-clipped). The
federation completes every round with a finite global state that stays close
to what the honest members moved it to.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load

from lab.local_federation import ServerProcess, register, start_client, start_server, train_args
from shared.api import FederationInfo
from shared.spec import DEFAULT_CLIP_NORM, RoundsSpec, load_spec
from tests.deltas import make_delta
from tests.e2e.test_federation_e2e import EXAMPLES
from tests.images import write_image_folder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROUNDS = 2
HUGE_EXAMPLES = 10**8  # the most the server accepts by default
NEAR_MAX = 3.0e38


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path / "server")
    yield proc
    proc.stop()


def _attack(server: ServerProcess, info: FederationInfo, api_key: str, log: list[Any]) -> None:
    """Each round: the near-max upload (expect 422), then the huge-norm one (expect 201)."""
    bound = info.spec.aggregation.max_abs_value
    assert bound is not None
    with server.http(api_key, timeout=120) as http:
        for rnd in range(1, ROUNDS + 1):
            while True:
                status = http.get(f"/v1/federations/{info.id}/rounds/current").json()
                if status["round"] >= rnd and status["status"] == "open":
                    break
                http.get(
                    f"/v1/federations/{info.id}/rounds/current",
                    params={"wait_s": 5, "revision": status["revision"]},
                )
            base = status["global_version"]
            for fill in (NEAR_MAX, bound * 0.999):
                body = make_delta(info, rnd, base, HUGE_EXAMPLES, fill)
                r = http.put(
                    f"/v1/federations/{info.id}/rounds/{rnd}/update",
                    content=body,
                    headers={"Content-Type": "application/octet-stream"},
                )
                log.append((rnd, fill, r.status_code, r.json()))


def _state(server: ServerProcess, fid: str, version: str | int) -> dict[str, torch.Tensor]:
    with server.http() as http:
        r = http.get(f"/v1/federations/{fid}/state", params={"version": str(version)})
    r.raise_for_status()
    return load(r.content)


def test_one_member_cannot_destroy_the_global_model(server, tmp_path):
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    lt = spec.local_training.model_copy(update={"epochs": 1, "batch_size": 8, "max_steps": 4})
    rounds = RoundsSpec(total=ROUNDS, quorum=3, min_updates=3, deadline_s=600)
    spec = spec.model_copy(update={"rounds": rounds, "local_training": lt})
    assert spec.aggregation.clip_norm == DEFAULT_CLIP_NORM  # the default, not set here
    admin = server.admin()
    info = admin.create_federation(spec)

    procs = []
    for i, org in enumerate(["honest-a", "honest-b"]):
        creds = tmp_path / org / "credentials.json"
        register(server, admin.create_enrollment_token(info.id).token, org, creds)
        data = write_image_folder(tmp_path / org / "data", spec.task.classes, 4, seed=i)
        args = train_args(server, creds, data, tmp_path / org / "work")
        procs.append(start_client(org, args, tmp_path / org / "client.log"))
    creds = tmp_path / "mallory" / "credentials.json"
    register(server, admin.create_enrollment_token(info.id).token, "mallory", creds)
    attempts: list[Any] = []
    attacker = threading.Thread(
        target=_attack, args=(server, info, json.loads(creds.read_text())["api_key"], attempts)
    )
    attacker.start()

    codes = [p.wait(timeout=600) for p in procs]
    attacker.join(timeout=60)

    assert codes == [0, 0], "\n".join(p.output()[-3000:] for p in procs) + server.log_tail()
    assert [(rnd, code) for rnd, _, code, _ in attempts] == [
        (r, c) for r in range(1, ROUNDS + 1) for c in (422, 201)
    ], attempts
    for _, fill, code, body in attempts:
        if code == 422:
            assert fill == NEAR_MAX and body["error"] == "invalid_update"
            assert "max_abs_value" in body["detail"], body
    history = admin.list_rounds(info.id)
    assert [(r.round, r.status, len(r.participants)) for r in history] == [
        (r, "closed", 3) for r in range(1, ROUNDS + 1)
    ]
    old = _state(server, info.id, 0)
    new = _state(server, info.id, ROUNDS)
    moved = 0.0
    for name, t in new.items():
        assert bool(torch.isfinite(t).all()), name
        moved += float((t.double() - old[name].double()).pow(2).sum())
    # Mallory's share is capped at 1/2 and her update clipped to DEFAULT_CLIP_NORM per round:
    # the honest updates are each within the clip as well, so the state moves at most
    # ROUNDS * DEFAULT_CLIP_NORM in total, however large her claims.
    assert moved**0.5 <= ROUNDS * DEFAULT_CLIP_NORM * (1 + 1e-4)
    for org in ("honest-a", "honest-b"):
        assert (
            "completed; final trainable state saved to"
            in (tmp_path / org / "client.log").read_text()
        )
