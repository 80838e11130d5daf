"""FedAvg of LoRA through a real aggregator: exact with `freeze_a`, not without.

A real `fedtune-server serve`, one federation per case (tiny CLIP, LoRA r=4 on
query and value, fedavg with uniform weights, no clipping), two enrolled
organisations. Each trains its own copy of the model on its own non-IID data
(digits 0-4 against 5-9) and uploads the delta as a client does. The round's
global state is then compared, per adapted projection, with the average of
the clients' own updates B_i A_i: with A frozen it is that average to float
round-off; with A trained, mean(B) mean(A) is off by a large fraction.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load

from client_sdk.credentials import load as load_credentials
from lab.local_federation import ServerProcess, register
from shared.blobs import DeltaMetadata, encode_state
from shared.spec import FederationSpec, parse_spec
from shared.tuning import build

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORGS = ["org-a", "org-b"]


def _spec(freeze_a: bool) -> FederationSpec:
    return parse_spec(
        {
            "name": f"lora-freeze-a-{str(freeze_a).lower()}",
            "model": {"family": "open_clip", "arch": "fedtune-tiny-clip", "pretrained": None},
            "task": {"classes": [str(i) for i in range(10)]},
            "method": {"name": "lora", "options": {"r": 4, "alpha": 8, "freeze_a": freeze_a}},
            "rounds": {"total": 1, "quorum": 2, "min_updates": 2, "deadline_s": 600},
            "aggregation": {"weighting": "uniform", "clip_norm": None},
            "seed": 0,
        }
    )


def _local_training(spec: FederationSpec, client: int) -> dict[str, torch.Tensor]:
    """One client's trainable state after a few SGD steps on its own half of the classes."""
    bm = build(spec)
    g = torch.Generator().manual_seed(100 + client)
    images = torch.randn(16, 3, 32, 32, generator=g) + (2.0 if client else -2.0)
    labels = torch.arange(16) % 5 + 5 * client
    params = [p for p in bm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=2.0)
    bm.model.train()
    for _ in range(12):
        optimizer.zero_grad()
        F.cross_entropy(bm.model(images), labels).backward()
        optimizer.step()
    return bm.trainable_state()


def _upload(server: ServerProcess, api_key: str, fid: str, base: str, delta: dict) -> None:
    meta = DeltaMetadata(federation=fid, round=1, base_version=base, num_examples=16, metrics={})
    with server.http(api_key, timeout=120) as http:
        r = http.put(
            f"/v1/federations/{fid}/rounds/1/update",
            content=encode_state(delta, meta.to_safetensors()),
            headers={"Content-Type": "application/octet-stream"},
        )
    assert r.status_code == 201, r.text


def _updates(state: dict[str, torch.Tensor], a: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per adapted projection, B A (A from `a` where the state holds no A)."""
    updates = {}
    for name, b in state.items():
        if name.endswith(".lora_B.weight"):
            a_name = name.replace("lora_B", "lora_A")
            updates[name.removesuffix(".lora_B.weight")] = b @ (
                state[a_name] if a_name in state else a[a_name]
            )
    return updates


def _run_round(server: ServerProcess, tmp_path: Path, spec: FederationSpec) -> list[float]:
    """Relative error, per projection, of the global B A against the mean of clients' B_i A_i."""
    admin = server.admin()
    info = admin.create_federation(spec)
    initial = build(spec)
    start, frozen_a = initial.trainable_state(), initial.base_state()
    client_updates = []
    for i, org in enumerate(ORGS):
        creds = tmp_path / spec.name / org / "credentials.json"
        register(server, admin.create_enrollment_token(info.id).token, org, creds)
        trained = _local_training(spec, i)
        delta = {n: trained[n] - start[n] for n in start}
        _upload(server, load_credentials(creds).api_key, info.id, info.global_version, delta)
        client_updates.append(_updates(trained, frozen_a))

    deadline = time.monotonic() + 120
    while admin.list_rounds(info.id)[0].status != "closed" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert admin.list_rounds(info.id)[0].status == "closed"
    with server.http() as http:
        r = http.get(f"/v1/federations/{info.id}/state", params={"version": "1"})
    r.raise_for_status()
    global_update = _updates(load(r.content), frozen_a)
    errors = []
    for name, got in global_update.items():
        want = (client_updates[0][name] + client_updates[1][name]) / 2
        errors.append(float((got - want).norm() / want.norm()))
    return errors


def test_frozen_a_makes_fedavg_of_lora_exact(server, tmp_path):
    errors = _run_round(server, tmp_path, _spec(freeze_a=True))

    assert len(errors) == 2 * 2  # query and value of both blocks
    assert max(errors) < 1e-5, errors


def test_trained_a_makes_fedavg_of_lora_inexact(server, tmp_path):
    errors = _run_round(server, tmp_path, _spec(freeze_a=False))

    print("relative error per projection without freeze_a:", [f"{e:.1%}" for e in errors])
    assert max(errors) > 0.02, errors  # against < 1e-5 with A frozen
