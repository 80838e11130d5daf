"""The aggregator with its blobs in an S3-compatible bucket (moto's `moto_server` process).

(a) `fedtune-server serve --blob-url s3://bucket/prefix` and two `fedtune-client`
    processes run a federation: every blob lands in the bucket, and state and base
    downloads are 307s to presigned URLs that the clients follow to the store
    (checking the sha256 against the server's ETag).
(b) A second replica with an empty data dir, the same database and the same
    bucket takes over half-way through a round: it validates and aggregates from
    what only the bucket holds, and streams states it never wrote.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml

from client_sdk import FedTuneClient
from lab.local_federation import ServerProcess, quiet_env, register, start_client, start_server
from shared.blobs import read_state
from shared.spec import parse_spec
from tests.deltas import make_delta
from tests.images import write_image_folder
from tests.s3server import S3Server, bucket_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "fedtune-e2e"
_PRESIGNED_GET = re.compile(rf'"GET /{BUCKET}/[^ ]*X-Amz-Signature=[^ ]* HTTP/1\.1" 200')


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with bucket_server(tmp_path_factory.mktemp("moto") / "moto.log", BUCKET) as server:
        yield server


def _spec(rounds: int, **aggregation: Any):
    spec: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "tiny-clip-bias.yaml").read_text())
    spec["rounds"] = {"total": rounds, "quorum": 2, "min_updates": 2, "deadline_s": 600}
    spec["local_training"].update(epochs=1, batch_size=8, max_steps=2)
    if aggregation:
        spec["aggregation"] = aggregation
    return parse_spec(spec)


def _key(prefix: str, digest: str) -> str:
    return f"{prefix}/sha256/{digest[:2]}/{digest[2:]}"


def test_a_federation_keeps_its_blobs_in_s3_and_clients_fetch_from_the_store(moto, tmp_path):
    server = start_server(
        tmp_path / "server",
        extra_args=["--blob-url", f"s3://{BUCKET}/fed"],
        env=quiet_env(**moto.env()),
    )
    try:
        spec = _spec(rounds=2)
        with server.admin() as admin:
            info = admin.create_federation(spec)
            procs = []
            for i, org in enumerate(["org-a", "org-b"]):
                token = admin.create_enrollment_token(info.id).token
                creds = tmp_path / org / "credentials.json"
                register(server, token, org, creds)
                data = write_image_folder(tmp_path / org / "data", spec.task.classes, 3, seed=i)
                args = [
                    "train", "--server", server.url, "--credentials", str(creds),
                    "--data", str(data), "--work-dir", str(tmp_path / org / "work"),
                    "--device", "cpu", "--quiet", *server.transport_args(),
                ]  # fmt: skip
                procs.append(start_client(org, args, tmp_path / org / "client.log"))
            codes = [p.wait(timeout=900) for p in procs]
            assert codes == [0, 0], "\n".join(p.output()[-3000:] for p in procs)
            history = admin.list_rounds(info.id)

        assert [(r.round, r.status, len(r.participants)) for r in history] == [
            (1, "closed", 2),
            (2, "closed", 2),
        ]
        keys = set(moto.keys(BUCKET, "fed/"))
        versions = [info.global_version, *(r.result_version for r in history)]
        assert {_key("fed", v) for v in versions if v} <= keys
        # the frozen base, three states and two deltas per round
        assert len({k for k in keys if k.startswith("fed/sha256/")}) >= 1 + 3 + 4
        assert not [k for k in keys if not k.startswith("fed/sha256/")]  # no probe left

        # both clients took the base and every state from the store, not from the service
        assert len(_PRESIGNED_GET.findall(moto.log_path.read_text())) >= 2 * 3

        with server.http() as api:
            r = api.get(f"/v1/federations/{info.id}/state")
        assert r.status_code == 307 and r.headers["etag"] == f'"{versions[-1]}"'
        assert r.headers["location"].startswith(f"{moto.url}/{BUCKET}/fed/sha256/")
        blob = httpx.get(r.headers["location"])  # no credentials: the URL is presigned
        assert hashlib.sha256(blob.content).hexdigest() == versions[-1]
        with FedTuneClient(server.url, api_key=server.admin_token, allow_http=True) as sdk:
            got = sdk.download_state(info.id, tmp_path / "state.safetensors", version=1)
        assert got.sha256 == history[0].result_version
    finally:
        server.stop()


@pytest.fixture
def replicas(moto: S3Server, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Servers started by the test (stopped at the end); shared database and token file."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def test_a_replica_with_an_empty_data_dir_aggregates_from_s3(moto, tmp_path, replicas):
    token_file = tmp_path / "admin-token"
    token_file.write_text(secrets.token_urlsafe(32))
    token_file.chmod(0o600)
    args = [
        "--blob-url", f"s3://{BUCKET}/replicas",
        "--database-url", f"sqlite:///{tmp_path / 'shared.db'}",
    ]  # fmt: skip

    def serve(name: str, *extra: str) -> ServerProcess:
        replicas.append(
            start_server(
                tmp_path / name,
                extra_args=[*args, *extra],
                env=quiet_env(**moto.env()),
                admin_token_file=token_file,
            )
        )
        return replicas[-1]

    first = serve("first")
    spec = _spec(rounds=1, strategy="fedavg", weighting="uniform", clip_norm=None)
    with first.admin() as admin:
        info = admin.create_federation(spec)
        token = admin.create_enrollment_token(info.id, uses=2).token
    with FedTuneClient(first.url, allow_http=True) as anonymous:
        keys = [anonymous.register_client(token, f"org-{i}").api_key for i in range(2)]
    deltas = [make_delta(info, 1, info.global_version, fill=f) for f in (0.01, 0.03)]

    def upload(server: ServerProcess, key: str, body: bytes) -> int:
        headers = {"Content-Type": "application/octet-stream"}
        with server.http(key) as c:
            return c.put(
                f"/v1/federations/{info.id}/rounds/1/update", content=body, headers=headers
            ).status_code

    assert upload(first, keys[0], deltas[0]) == 201
    first.stop()

    second = serve("second", "--no-presign-downloads")
    assert not list((tmp_path / "second").rglob("sha256/*/*"))  # nothing cached yet
    assert upload(second, keys[1], deltas[1]) == 201
    with FedTuneClient(second.url, api_key=second.admin_token, allow_http=True) as admin:
        deadline = time.monotonic() + 300
        while admin.current_round(info.id).federation_status != "completed":
            assert time.monotonic() < deadline, second.log_tail()
            time.sleep(0.3)
        history = admin.list_rounds(info.id)
        assert [(r.round, r.status) for r in history] == [(1, "closed")]
        result = history[0].result_version
        assert result is not None
        assert _key("replicas", result) in moto.keys(BUCKET, "replicas/")

        # streamed by the replica (no presigning), from the bucket through its cache
        got = admin.download_state(info.id, tmp_path / "initial.safetensors", version=0)
        assert got.sha256 == info.global_version and not got.not_modified
        got = admin.download_state(info.id, tmp_path / "result.safetensors")
        assert got.sha256 == result

    initial = read_state(tmp_path / "initial.safetensors")
    final = read_state(tmp_path / "result.safetensors")
    for name, tensor in initial.items():  # the mean of both deltas: one came only from S3
        step = final[name] - tensor
        assert torch.allclose(step, torch.full_like(step, 0.02), atol=1e-5), name
