"""Secure aggregation's cost: the bytes and seconds one round of SecAgg+ adds to a bias-tuning
round, against the same round without it, in the same run, on one real server process.

For each model (the tiny CLIP of the tests, and ViT-B/16 (FedTune's registered config, seeded
random init) whose 102,912 bias parameters plus a two-class head train) two federations are
created on a fresh `fedtune-server serve`: one plain, one with `secure_aggregation`. N clients
(registered organisations, driven in this process through the SDK: `FedTuneClient.upload_update`
for the plain round, `client_sdk.secagg.SecureRound`'s four steps for the secure one) send the
same random deltas. Local training is the same in both and is left out.

Printed per model and mode: the bytes each client sends and receives for its update (request
and response bodies of the update or protocol calls; the global state's download is the same
in both and left out), the client's seconds for them (mean over clients: for the secure round
key generation, Shamir sharing, AES-GCM, the PRG masks, the fixed-point encoding and the HTTP
calls), and the round's wall time from the first request to the round closed (the server's
reconstruction and unmasking included).

Usage: python benchmarks/secagg.py [--clients 5] [--neighbours 4 (0: all)] [--models tiny-clip,vit-b16]
       [--modulus-bits 64 (32: int32 words)] [--scale-bits 24]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client_sdk import FedTuneClient
from client_sdk.credentials import load
from client_sdk.secagg import SecureRound
from lab.local_federation import ServerProcess, register, start_server
from shared.api import FederationInfo
from shared.blobs import atomic_save_state
from shared.spec import parse_spec

MODELS: dict[str, dict[str, Any]] = {
    "tiny-clip": {
        "model": {"family": "open_clip", "arch": "fedtune-tiny-clip", "pretrained": None},
        "task": {"classes": [str(i) for i in range(10)], "prompt_template": "a photo of {}."},
        "method": {"name": "bias", "train_head": False},
    },
    "vit-b16": {
        "model": {
            "family": "hf_vit",
            "arch": "google/vit-base-patch16-224-in21k",
            "pretrained": None,
        },
        "task": {"classes": ["a", "b"]},
        "method": {"name": "bias"},
    },
}


@dataclass
class Traffic:
    """Request and response body bytes of the calls whose path holds `marker`."""

    markers: tuple[str, ...]
    sent: int = 0
    received: int = 0

    def hooks(self) -> dict[str, list[Callable[..., Any]]]:
        def on_request(request: httpx.Request) -> None:
            if any(m in request.url.path for m in self.markers):
                self.sent += int(request.headers.get("content-length") or 0)

        def on_response(response: httpx.Response) -> None:
            if any(m in response.request.url.path for m in self.markers):
                response.read()
                self.received += len(response.content)

        return {"request": [on_request], "response": [on_response]}


@dataclass
class Org:
    client: FedTuneClient
    client_id: str
    traffic: Traffic
    delta: Path
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _spec(
    model: str, clients: int, neighbours: int | None, secure: dict[str, Any] | None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": f"bench-{model}-{'secure' if secure else 'plain'}",
        **MODELS[model],
        "rounds": {"total": 1, "quorum": clients, "min_updates": 2, "deadline_s": 3600},
        "aggregation": {"strategy": "fedavg", "clip_norm": None},
    }
    if secure is not None:  # neighbours 0: every other client
        spec["secure_aggregation"] = {"neighbours": neighbours or None, **secure}
    return spec


def _orgs(
    server: ServerProcess, info: FederationInfo, n: int, root: Path, secure: bool
) -> list[Org]:
    admin = server.admin()
    markers = ("/secure-aggregation",) if secure else ("/update",)
    orgs = []
    for i in range(n):
        creds = root / f"{info.id}-{i}.json"
        register(server, admin.create_enrollment_token(info.id).token, f"org-{i}", creds)
        c = load(creds)
        traffic = Traffic(markers)
        client = FedTuneClient(server.url, api_key=c.api_key, allow_http=True)
        client._http.event_hooks = traffic.hooks()
        gen = torch.Generator().manual_seed(i)
        delta = {k: torch.randn(t.shape, generator=gen) * 1e-3 for k, t in info.manifest.items()}
        path = root / f"{info.id}-{i}.safetensors"
        meta = {
            "format": "fedtune-delta/1",
            "federation": info.id,
            "round": "1",
            "base_version": info.global_version,
            "num_examples": str(100 + i),
            "metrics": "{}",
        }
        atomic_save_state(path, delta, meta)
        orgs.append(Org(client, c.client_id, traffic, path))
    return orgs


def _timed(org: Org, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    org.seconds += time.perf_counter() - start
    return out


def _wait_closed(admin: FedTuneClient, info: FederationInfo) -> None:
    status = admin.current_round(info.id)
    while status.federation_status != "completed":
        status = admin.current_round(info.id, wait_s=10, revision=status.revision)


def plain_round(server: ServerProcess, info: FederationInfo, orgs: list[Org]) -> float:
    start = time.perf_counter()
    for o in orgs:
        _timed(o, lambda o=o: o.client.upload_update(info.id, 1, o.delta))
    _wait_closed(server.admin(), info)
    return time.perf_counter() - start


def secure_round(server: ServerProcess, info: FederationInfo, orgs: list[Org], root: Path) -> float:
    rounds = {
        o.client_id: SecureRound(o.client, info.spec, info.id, o.client_id, root / o.client_id)
        for o in orgs
    }

    def until(phase: str) -> None:
        while rounds[orgs[0].client_id].state(1).phase != phase:
            time.sleep(0.02)

    start = time.perf_counter()
    for o in orgs:
        _timed(o, lambda o=o: rounds[o.client_id].advertise(1, 1))
    until("share")
    for o in orgs:
        sr = rounds[o.client_id]
        _timed(o, lambda sr=sr: sr._post(1, "/shares", sr.share_body(1, sr.state(1))))
    until("input")
    for o in orgs:
        sr = rounds[o.client_id]

        def masked(sr: SecureRound = sr, o: Org = o) -> None:
            st = sr.state(1)
            sr.received(1, st)
            sr.upload_masked(1, st.attempt, sr.masked_input(1, st, o.delta, 100))

        _timed(o, masked)
    until("unmask")
    for o in orgs:
        sr = rounds[o.client_id]
        _timed(o, lambda sr=sr: sr._post(1, "/unmask", sr.unmask_body(1, sr.state(1))))
    _wait_closed(server.admin(), info)
    return time.perf_counter() - start


def bench(
    server: ServerProcess, model: str, n: int, k: int | None, root: Path, bits: dict[str, int]
) -> None:
    admin = server.admin()
    rows = []
    for secure in (False, True):
        info = admin.create_federation(parse_spec(_spec(model, n, k, bits if secure else None)))
        orgs = _orgs(server, info, n, root, secure)
        wall = secure_round(server, info, orgs, root) if secure else plain_round(server, info, orgs)
        sent = sum(o.traffic.sent for o in orgs) / n
        received = sum(o.traffic.received for o in orgs) / n
        seconds = sum(o.seconds for o in orgs) / n
        rows.append((secure, info.trainable_params, sent, received, seconds, wall))
    (_, d, ps, pr, pc, pw), (_, _, ss, sr_, sc, sw) = rows
    print(
        f"{model}: {d:,} trainable parameters (bias), {n} clients, neighbours {k or n - 1}, "
        f"modulus 2^{bits['modulus_bits']}, scale 2^{bits['scale_bits']}"
    )
    print(
        f"  plain  : {ps / 1024:9.1f} KiB sent, {pr / 1024:7.1f} KiB received per client; "
        f"client {pc * 1000:7.1f} ms; round {pw:6.2f} s"
    )
    print(
        f"  secure : {ss / 1024:9.1f} KiB sent, {sr_ / 1024:7.1f} KiB received per client; "
        f"client {sc * 1000:7.1f} ms; round {sw:6.2f} s"
    )
    print(
        f"  secure / plain: bytes sent x{ss / ps:.2f}, received +{(sr_ - pr) / 1024:.1f} KiB, "
        f"client seconds x{sc / pc:.1f}, round wall x{sw / pw:.1f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--neighbours", type=int, default=4, help="0: every other client")
    parser.add_argument("--models", default="tiny-clip,vit-b16")
    parser.add_argument("--modulus-bits", type=int, default=64, help="32: int32 words")
    parser.add_argument("--scale-bits", type=int, default=24)
    args = parser.parse_args(argv)
    bits = {"modulus_bits": args.modulus_bits, "scale_bits": args.scale_bits}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "FEDTUNE_LOG_LEVEL": "warning"}
        server = start_server(root / "server", env=env)
        try:
            for model in args.models.split(","):
                bench(server, model, args.clients, args.neighbours, root, bits)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
