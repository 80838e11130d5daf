"""The aggregator survives SIGKILL: mid-upload and mid-aggregation, with nothing lost or doubled.

One federation (tiny CLIP, 3 rounds, quorum 3, FedAdam with clipping, so the
server optimiser's stored moments must carry across the crashes too) runs on a
real `fedtune-server serve` process that is killed twice:

(a) round 1: one client's upload has been accepted and two more are half-way
    through their bodies when the server gets SIGKILL. It restarts on the same
    data directory; the clients re-send (the same bytes) what got no 2xx.
(b) round 2: the server runs with an injected aggregation delay (the test plugin
    in tests/e2e/faults), so SIGKILL lands while the round is `aggregating`;
    restarted without it, it aggregates the round from its durable inputs at
    start-up.

Then: every accepted update is in the history exactly once, each round has one
result, no half-written blob is left or served, and the final global state is
bit-identical to the same federation run without interruption on a second
server. Deltas are crafted deterministically per (round, rank of the client id),
so both servers sum the same tensors in the same order.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml

from client_sdk import FedTuneClient
from lab.local_federation import ServerProcess, quiet_env, start_server
from shared.api import FederationInfo, RoundRecord, RoundStatus
from shared.spec import parse_spec
from tests.deltas import make_delta

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).resolve().parent / "faults"
ROUNDS = 3


def faulty_env(**faults: str) -> dict[str, str]:
    """A server environment that loads the fault plugin (tests/e2e/faults) with `faults` set."""
    path = os.pathsep.join(p for p in (str(FAULTS), os.environ.get("PYTHONPATH")) if p)
    return quiet_env(PYTHONPATH=path, **faults)


@dataclass
class Fed:
    """A federation on one server, its clients ordered by organisation name (the aggregation
    order, the same in every run; client ids are drawn afresh)."""

    server: ServerProcess
    info: FederationInfo
    keys: dict[str, str]
    names: dict[str, str]  # client id -> organisation name
    accepted: dict[int, set[str]] = field(default_factory=dict)  # round -> clients with a 2xx
    written: dict[tuple[int, str], bytes] = field(default_factory=dict)

    @property
    def clients(self) -> list[str]:
        return sorted(self.keys, key=self.names.__getitem__)

    def status(self) -> RoundStatus:
        with self.server.http() as c:
            r = c.get(f"/v1/federations/{self.info.id}/rounds/current")
        assert r.status_code == 200, r.text
        return RoundStatus.model_validate(r.json())

    def delta(self, rnd: int, cid: str, base_version: str) -> bytes:
        """Client `cid`'s delta for round `rnd`: seeded by (round, rank of its name).

        Encoded once and kept, as a client keeps the file it wrote and re-sends it.
        """
        if (rnd, cid) not in self.written:
            rank = self.clients.index(cid)
            gen = torch.Generator().manual_seed(1000 * rnd + rank)
            self.written[rnd, cid] = make_delta(
                self.info,
                rnd,
                base_version,
                num_examples=10 + 7 * rank,
                fill=lambda _, shape: torch.randn(shape, generator=gen).mul_(0.01),
                metrics={"train_loss": 1.0 / (rnd + rank)},
            )
        return self.written[rnd, cid]

    def upload(self, rnd: int, cid: str, body: bytes, stall: threading.Event | None = None) -> int:
        """PUT the delta; with `stall`, send half the body and wait for the event first."""

        def halves() -> Iterator[bytes]:
            yield body[: len(body) // 2]
            assert stall is not None
            stall.wait(60)
            yield body[len(body) // 2 :]

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
        with self.server.http(self.keys[cid]) as c:
            r = c.put(
                f"/v1/federations/{self.info.id}/rounds/{rnd}/update",
                content=halves() if stall else body,
                headers=headers,
            )
        if r.is_success:
            self.accepted.setdefault(rnd, set()).add(cid)
        return r.status_code

    def wait_round(self, rnd: int, timeout: float = 120) -> RoundStatus:
        """Until round `rnd` is open (or the federation has completed)."""
        until = time.monotonic() + timeout
        while True:
            st = self.status()
            if st.federation_status == "completed" or (st.round == rnd and st.status == "open"):
                return st
            assert time.monotonic() < until, f"round {rnd} never opened: {st}"
            time.sleep(0.1)

    def run_round(self, rnd: int) -> None:
        base = self.wait_round(rnd).global_version
        for cid in self.clients:
            assert self.upload(rnd, cid, self.delta(rnd, cid, base)) == 201

    def history(self) -> list[RoundRecord]:
        with self.server.http() as c:
            r = c.get(f"/v1/federations/{self.info.id}/rounds")
        assert r.status_code == 200, r.text
        return [RoundRecord.model_validate(x) for x in r.json()]

    def rounds_aggregated_metric(self) -> float:
        with self.server.http() as c:  # the admin token reads /metrics
            text = c.get("/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("fedtune_rounds_aggregated_total"))
        return float(line.split()[-1])


def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "tiny-clip-bias.yaml").read_text())
    spec["rounds"] = {"total": ROUNDS, "quorum": 3, "min_updates": 3, "deadline_s": 600}
    # a strategy with server state (FedAdam's moments) and clipping: both must survive the kills
    spec["aggregation"] = {"strategy": "fedadam", "options": {"server_lr": 0.05}, "clip_norm": 0.3}
    return spec


def _create_federation(server: ServerProcess) -> Fed:
    with server.admin() as admin:
        info = admin.create_federation(parse_spec(_spec()))
        token = admin.create_enrollment_token(info.id, uses=3).token
    with FedTuneClient(server.url, allow_http=True) as anonymous:
        regs = [anonymous.register_client(token, f"org-{i}") for i in range(3)]
    return Fed(
        server,
        info,
        {reg.client_id: reg.api_key for reg in regs},
        {reg.client_id: f"org-{i}" for i, reg in enumerate(regs)},
    )


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[[str], ServerProcess]]:
    """`launch(name)`: a server on `tmp_path/name/data` (admin token generated there)."""
    started: list[ServerProcess] = []

    def start(name: str) -> ServerProcess:
        started.append(start_server(tmp_path / name / "data"))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def _crash_mid_upload(fed: Fed) -> set[str]:
    """Round 1: one upload accepted, two stalled half-way, SIGKILL. Returns who got no 2xx."""
    base = fed.wait_round(1).global_version
    first, *stalled = fed.clients
    assert fed.upload(1, first, fed.delta(1, first, base)) == 201
    release = threading.Event()
    outcomes: dict[str, int | str] = {}

    def send(cid: str) -> None:
        try:
            outcomes[cid] = fed.upload(1, cid, fed.delta(1, cid, base), stall=release)
        except httpx.HTTPError as exc:
            outcomes[cid] = type(exc).__name__

    threads = [threading.Thread(target=send, args=(cid,)) for cid in stalled]
    for t in threads:
        t.start()
    temps = fed.server.data_dir / "blobs" / "tmp"
    until = time.monotonic() + 20
    while len(list(temps.glob("*.tmp"))) < len(stalled) and time.monotonic() < until:
        time.sleep(0.05)
    half_written = len(list(temps.glob("*.tmp")))
    fed.server.kill()
    assert half_written == len(stalled)  # the kill landed with both bodies half-way to disk
    release.set()
    for t in threads:
        t.join(60)
    assert all(not isinstance(v, int) or v >= 300 for v in outcomes.values()), outcomes
    return {cid for cid in fed.clients if cid not in fed.accepted.get(1, set())}


def _crash_mid_aggregation(fed: Fed) -> None:
    """Round 2: all three accepted, SIGKILL while the (delayed) aggregation runs."""
    base = fed.wait_round(2).global_version
    threads = [
        threading.Thread(target=fed.upload, args=(2, cid, fed.delta(2, cid, base)))
        for cid in fed.clients
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert fed.accepted[2] == set(fed.clients)
    until = time.monotonic() + 30
    while (st := fed.status()).status != "aggregating":
        assert st.round == 2 and time.monotonic() < until, f"round 2 not aggregating: {st}"
        time.sleep(0.05)
    aggregated_before_kill = fed.rounds_aggregated_metric()
    fed.server.kill()
    assert aggregated_before_kill == 1.0  # round 1 only: round 2 never finished here


def _assert_blob_store_clean(data_dir: Path) -> None:
    blobs = data_dir / "blobs"
    assert list((blobs / "tmp").glob("*")) == []
    for path in (blobs / "sha256").rglob("*"):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest == path.parent.name + path.name, f"corrupt blob {path}"


def test_sigkill_mid_upload_and_mid_aggregation_loses_and_doubles_nothing(launch):
    # (a) killed while uploads of round 1 are in flight
    crashed = launch("crashed")
    fed = _create_federation(crashed)
    missing = _crash_mid_upload(fed)
    assert len(missing) == 2
    crashed.restart(env=faulty_env(FAULT_AGGREGATION_DELAY_S="3"))
    assert list((crashed.data_dir / "blobs" / "tmp").glob("*")) == []
    assert fed.status().received == 1  # the accepted update survived, the stalled ones left nothing
    base = fed.status().global_version
    for cid in fed.clients:  # re-send: the same bytes; the one already accepted is a duplicate
        expected = 201 if cid in missing else 200
        assert fed.upload(1, cid, fed.delta(1, cid, base)) == expected

    # (b) killed while round 2 is aggregating
    _crash_mid_aggregation(fed)
    crashed.restart(env=quiet_env())
    fed.wait_round(3)
    assert fed.rounds_aggregated_metric() == 1.0  # round 2, recovered at start-up
    base2 = fed.history()[1].base_version
    assert fed.upload(2, fed.clients[0], fed.delta(2, fed.clients[0], base2)) == 200
    fed.run_round(3)
    final = fed.wait_round(ROUNDS + 1)
    assert final.federation_status == "completed"
    assert fed.rounds_aggregated_metric() == 2.0

    history = fed.history()
    assert [h.round for h in history] == [1, 2, 3]
    for record in history:
        ids = [p.client_id for p in record.participants]
        assert sorted(ids) == sorted(set(ids)) == sorted(fed.accepted[record.round])
        assert record.status == "closed" and record.result_version is not None
    assert final.global_version == history[-1].result_version
    with crashed.http() as c:
        for record in history:
            r = c.get(f"/v1/federations/{fed.info.id}/state", params={"version": record.round})
            assert r.status_code == 200
            assert hashlib.sha256(r.content).hexdigest() == record.result_version
            assert r.headers["ETag"].strip('"') == record.result_version
    crashed.stop()
    _assert_blob_store_clean(crashed.data_dir)

    # the same federation and deltas, never interrupted
    ref = _create_federation(launch("steady"))
    assert ref.info.global_version == fed.info.global_version  # same seeded initial state
    for rnd in range(1, ROUNDS + 1):
        ref.run_round(rnd)
    ref_final = ref.wait_round(ROUNDS + 1)  # the last round has closed before its history is read
    ref_history = ref.history()
    assert [h.result_version for h in ref_history] == [h.result_version for h in history]
    assert ref_final.global_version == final.global_version
