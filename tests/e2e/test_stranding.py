"""Nothing strands a round, and faults answer as faults: real `fedtune-server serve` processes.

1. Two replicas sharing only a PostgreSQL database and an S3-compatible store (each its own
   data directory): the one aggregating is SIGKILLed mid-aggregation; the survivor takes the
   round over by itself, once, with the undisturbed result.
2. A crash between accepting the quorum-reaching update and aggregating: the restarted server
   closes the round at once (not at its deadline, an hour away); failing attempts are retried
   with backoff and kept in the history.
3. PostgreSQL stopped for a minute under a running federation: 503 with Retry-After while it
   is away, one log line for the outage and one for the recovery, and the clients finish.
4. A full disk: 507 with Retry-After, /readyz says so, nothing partial is left; then recovery.
5. A trickling or stalled upload body is dropped with 408 and leaves no temp file.

Deltas are seeded by (round, organisation), so two runs of a federation sum the same tensors.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
import torch
import yaml
from sqlalchemy import create_engine, func
from sqlalchemy import select as sql_select

from aggregator_service.storage.database import parse_database_url
from aggregator_service.storage.tables import round_leases, state_versions
from client_sdk import FedTuneClient
from lab.local_federation import (
    ServerProcess,
    quiet_env,
    register,
    start_client,
    start_server,
    train_args,
)
from shared.api import FederationInfo, RoundRecord, RoundStatus
from shared.spec import parse_spec
from tests.aggregator_service.test_postgres import ADMIN
from tests.deltas import make_delta
from tests.e2e.test_crash_recovery import faulty_env
from tests.images import write_image_folder
from tests.pgserver import ClusterUnavailable, fresh_database, private_cluster
from tests.s3server import S3Server, bucket_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


ROOT = Path(__file__).resolve().parents[2]
ORGS = ("org-0", "org-1")
LEASE_S = 3.0
T = TypeVar("T")


# -- helpers ---------------------------------------------------------------------------------


def _spec(rounds: int = 2, deadline_s: float = 3600) -> dict[str, Any]:
    """tiny-clip-bias, every organisation needed for the quorum, the deadline far away."""
    spec: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "tiny-clip-bias.yaml").read_text())
    n = len(ORGS)
    spec["rounds"] = {"total": rounds, "quorum": n, "min_updates": n, "deadline_s": deadline_s}
    return spec


@dataclass
class Fed:
    """A federation and its organisations' API keys, spoken to through any replica."""

    info: FederationInfo
    keys: dict[str, str]  # organisation name -> API key

    def status(self, server: ServerProcess, api_key: str | None = None) -> RoundStatus:
        with server.http(api_key) as c:
            r = c.get(f"/v1/federations/{self.info.id}/rounds/current")
        assert r.status_code == 200, r.text
        return RoundStatus.model_validate(r.json())

    def upload(self, server: ServerProcess, rnd: int, org: str, body: bytes) -> httpx.Response:
        with server.http(self.keys[org]) as c:
            return c.put(
                f"/v1/federations/{self.info.id}/rounds/{rnd}/update",
                content=body,
                headers={"Content-Type": "application/octet-stream"},
            )

    def history(self, server: ServerProcess, api_key: str | None = None) -> list[RoundRecord]:
        with server.http(api_key) as c:
            r = c.get(f"/v1/federations/{self.info.id}/rounds")
        assert r.status_code == 200, r.text
        return [RoundRecord.model_validate(x) for x in r.json()]

    def wait_open(self, server: ServerProcess, rnd: int, timeout: float) -> RoundStatus:
        """Until round `rnd` is open or the federation has completed; fails after `timeout`."""

        def opened() -> RoundStatus | None:
            st = self.status(server)
            done = st.federation_status == "completed" or (st.round, st.status) == (rnd, "open")
            return st if done else None

        return wait_for(opened, timeout, f"round {rnd} to open")


def create_federation(server: ServerProcess, spec: dict[str, Any]) -> Fed:
    with server.admin() as admin:
        info = admin.create_federation(parse_spec(spec))
        token = admin.create_enrollment_token(info.id, uses=len(ORGS)).token
    with FedTuneClient(server.url, allow_http=True) as anonymous:
        keys = {org: anonymous.register_client(token, org).api_key for org in ORGS}
    return Fed(info, keys)


def delta(fed: Fed, rnd: int, org: str, base_version: str) -> bytes:
    """`org`'s delta for round `rnd`, the same bytes in every run of the federation."""
    gen = torch.Generator().manual_seed(1000 * rnd + ORGS.index(org))
    return make_delta(
        fed.info,
        rnd,
        base_version,
        num_examples=10 + 7 * ORGS.index(org),
        fill=lambda _, shape: torch.randn(shape, generator=gen).mul_(0.01),
    )


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    until = time.monotonic() + timeout
    while (value := probe()) is None:
        if time.monotonic() > until:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)
    return value


def rounds_aggregated(server: ServerProcess) -> float:
    with server.http() as c:
        text = c.get("/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("fedtune_rounds_aggregated_total"))
    return float(line.split()[-1])


def temp_files(data_dir: Path) -> list[Path]:
    return list((data_dir / "blobs" / "tmp").glob("*"))


def admin_token_file(directory: Path) -> Path:
    path = directory / "admin-token"
    path.write_text(ADMIN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Servers a test starts (append them): stopped at the end, whatever happened."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


# -- 1. a replica dies mid-aggregation -------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[S3Server]:
    """An S3-compatible server (moto's, a process of its own) with the replicas' bucket."""
    with bucket_server(tmp_path / "moto.log", "fedtune") as server:
        yield server


def test_a_replica_killed_mid_aggregation_is_replaced_by_the_survivor(
    pg_server, store, servers, tmp_path
):
    with fresh_database(pg_server) as url, fresh_database(pg_server) as steady_url:
        token = admin_token_file(tmp_path)

        def replica(
            name: str, db: str, blobs: str, env: dict[str, str] | None = None
        ) -> ServerProcess:
            # Each replica has its own data directory (a cache); the database and the store
            # are all they share, as behind a load balancer.
            args = ["--database-url", db, "--lease-s", str(LEASE_S), "--blob-url", blobs]
            env = {**(env or quiet_env()), **store.env()}
            servers.append(
                start_server(tmp_path / name, extra_args=args, env=env, admin_token_file=token)
            )
            return servers[-1]

        # as if on another host: the survivor cannot see it die, only its lease expire
        slow_env = faulty_env(FAULT_AGGREGATION_DELAY_S="600", FAULT_HOSTNAME="elsewhere")
        slow = replica("slow", url, "s3://fedtune/disturbed", slow_env)
        survivor = replica("survivor", url, "s3://fedtune/disturbed")
        fed = create_federation(survivor, _spec())

        # Round 1: one update through the survivor; the quorum-reaching one through the slow
        # replica, which starts the aggregation at once. The survivor is paused meanwhile so
        # that its sweeper cannot claim the lease first.
        base = fed.status(survivor).global_version
        assert fed.upload(survivor, 1, ORGS[0], delta(fed, 1, ORGS[0], base)).status_code == 201
        survivor.proc.send_signal(signal.SIGSTOP)
        try:
            assert fed.upload(slow, 1, ORGS[1], delta(fed, 1, ORGS[1], base)).status_code == 201
            owner = wait_for(lambda: _lease_owner(url, 1), 30, "the slow replica's lease")
        finally:
            survivor.proc.send_signal(signal.SIGCONT)
        assert owner.startswith(f"elsewhere:{slow.proc.pid}:")
        time.sleep(2 * LEASE_S)  # the heartbeat renews the lease: nobody takes over the work
        assert fed.status(survivor).status == "aggregating"
        assert _lease_owner(url, 1) == owner
        slow.kill()

        # the survivor closes it once the lease expires, nobody restarted
        fed.wait_open(survivor, 2, timeout=LEASE_S + 20)
        base = fed.status(survivor).global_version
        for org in ORGS:
            assert fed.upload(survivor, 2, org, delta(fed, 2, org, base)).status_code == 201
        final = fed.wait_open(survivor, 3, timeout=60)
        assert final.federation_status == "completed"

        assert _versions_per_round(url) == {0: 1, 1: 1, 2: 1}  # 0: the initial state
        assert rounds_aggregated(survivor) == 2.0  # the killed replica closed none
        first, *_ = history = fed.history(survivor)
        assert len(first.attempts) >= 2
        assert first.attempts[0].outcome is None  # its replica died
        assert first.attempts[-1].outcome == "closed"
        assert first.aggregation_started_at is not None
        assert first.aggregation_started_at <= first.attempts[0].started_at
        assert first.attempts[0].started_at < first.attempts[1].started_at

        # the same updates on one undisturbed server
        steady = replica("steady", steady_url, "s3://fedtune/steady")
        ref = create_federation(steady, _spec())
        assert ref.info.global_version == fed.info.global_version
        for rnd in (1, 2):
            base = ref.wait_open(steady, rnd, timeout=60).global_version
            for org in ORGS:
                assert ref.upload(steady, rnd, org, delta(ref, rnd, org, base)).status_code == 201
        assert ref.wait_open(steady, 3, timeout=60).global_version == final.global_version
        assert [h.result_version for h in ref.history(steady)] == [
            h.result_version for h in history
        ]


def _lease_owner(url: str, rnd: int) -> str | None:
    engine = create_engine(parse_database_url(url))
    try:
        with engine.connect() as conn:
            owner: str | None = conn.execute(
                sql_select(round_leases.c.owner).where(round_leases.c.round == rnd)
            ).scalar()
            return owner
    finally:
        engine.dispose()


def _versions_per_round(url: str) -> dict[int, int]:
    engine = create_engine(parse_database_url(url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sql_select(state_versions.c.round, func.count()).group_by(state_versions.c.round)
            ).all()
        return {int(r[0]): int(r[1]) for r in rows}
    finally:
        engine.dispose()


# -- 2. a fault between accepting the quorum and aggregating ---------------------------------


def test_a_server_killed_after_accepting_the_quorum_closes_the_round_on_restart(servers, tmp_path):
    # a lease far longer than the wait below: the restart must see its predecessor is dead
    server = start_server(
        tmp_path / "data",
        extra_args=["--lease-s", "600"],
        env=faulty_env(FAULT_KILL_BEFORE_AGGREGATION="1"),
    )
    servers.append(server)
    fed = create_federation(server, _spec(deadline_s=3600))
    base = fed.status(server).global_version
    assert fed.upload(server, 1, ORGS[0], delta(fed, 1, ORGS[0], base)).status_code == 201
    with contextlib.suppress(httpx.HTTPError):  # it may die before or after answering
        fed.upload(server, 1, ORGS[1], delta(fed, 1, ORGS[1], base))
    assert server.proc.wait(timeout=30) == -signal.SIGKILL

    server.restart(env=quiet_env())
    fed.wait_open(server, 2, timeout=30)  # not at the deadline nor the lease's expiry

    first = fed.history(server)[0]
    assert first.participant_count == 2 and first.status == "closed"
    assert [a.outcome for a in first.attempts] == [None, "closed"]


def test_failed_aggregation_attempts_are_retried_with_backoff_and_kept(servers, tmp_path):
    server = start_server(tmp_path / "data", env=faulty_env(FAULT_AGGREGATION_FAILURES="2"))
    servers.append(server)
    fed = create_federation(server, _spec())
    base = fed.status(server).global_version
    for org in ORGS:
        assert fed.upload(server, 1, org, delta(fed, 1, org, base)).status_code == 201

    fed.wait_open(server, 2, timeout=30)

    attempts = fed.history(server)[0].attempts
    assert [a.outcome for a in attempts] == ["failed", "failed", "closed"]
    for a in attempts[:2]:
        assert a.error is not None and "injected aggregation failure" in a.error
    assert attempts[2].error is None
    for backoff, (failed, retry) in zip((1.0, 2.0), itertools.pairwise(attempts), strict=False):
        assert failed.ended_at is not None
        assert (retry.started_at - failed.ended_at).total_seconds() >= backoff - 0.05
    as_client = fed.history(server, fed.keys[ORGS[0]])[0].attempts
    assert [a.error for a in as_client] == [None, None, None]  # errors are the admin's


# -- 3. the database away for a minute -------------------------------------------------------

OUTAGE_S = 60.0


@pytest.fixture
def stoppable_postgres() -> Iterator[Any]:
    try:
        with private_cluster() as cluster:
            yield cluster
    except ClusterUnavailable as exc:
        print(f"skipped: {exc}")
        pytest.skip(f"no private PostgreSQL cluster can be started: {exc}")


def test_a_database_outage_mid_round_answers_503_and_the_federation_completes(
    stoppable_postgres, servers, tmp_path
):
    pg = stoppable_postgres
    server = start_server(tmp_path / "data", extra_args=["--database-url", pg.url])
    servers.append(server)
    with server.admin() as admin:
        fid = admin.create_federation(parse_spec(_spec(deadline_s=600))).id
    keys: dict[str, str] = {}
    clients = []
    for k, org in enumerate(ORGS):
        creds = tmp_path / org / "credentials.json"
        with server.admin() as admin:
            register(server, admin.create_enrollment_token(fid).token, org, creds)
        keys[org] = json.loads(creds.read_text())["api_key"]
        data = write_image_folder(
            tmp_path / org / "data",
            [str(c) for c in range(10)],
            3,
            seed=k,
            mean=lambda c, _i: 20 * c,
            std=40,
        )
        args = train_args(server, creds, data, tmp_path / org / "work")
        clients.append(start_client(org, args, tmp_path / org / "client.log"))

    def round_1_has_updates() -> bool | None:
        with server.http() as c:
            st = RoundStatus.model_validate(c.get(f"/v1/federations/{fid}/rounds/current").json())
        return True if st.round > 1 or st.received >= 1 else None

    wait_for(round_1_has_updates, 300, "an update in round 1")
    pg.stop()
    stopped = time.monotonic()
    with server.http(keys[ORGS[0]]) as c:
        r = c.get(f"/v1/federations/{fid}/rounds/current")
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "5"
    assert r.json()["error"] == "database_unavailable"
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
    pg.start()

    for client in clients:
        assert client.wait(timeout=600) == 0, client.output()[-3000:]
    with server.admin() as admin:
        assert admin.get_federation(fid).status == "completed"
    log = server.log_path.read_text(errors="replace").splitlines()
    down = [x for x in log if "database unavailable" in x and "logged once" in x]
    assert len(down) == 1, "\n".join(down)
    assert any("database unavailable: recovered" in x for x in log)


# -- 4. a full disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 24 MiB tmpfs, unmounted at the end."""
    mountpoint = Path(tempfile.mkdtemp(prefix="fedtune-disk-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        mountpoint.rmdir()
        reason = f"cannot mount a tmpfs: {done.stderr.strip() or done.returncode}"
        print(f"skipped: {reason}")
        pytest.skip(reason)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        mountpoint.rmdir()


def test_a_full_disk_answers_507_leaves_nothing_and_recovers(small_disk, servers):
    data = small_disk / "data"
    server = start_server(data)
    servers.append(server)
    fed = create_federation(server, _spec())
    body = delta(fed, 1, ORGS[0], fed.status(server).global_version)
    filler = small_disk / "filler"
    _fill(filler, leave=len(body) // 2)

    refused = fed.upload(server, 1, ORGS[0], body)
    assert refused.status_code == 507, refused.text
    assert refused.headers["Retry-After"] == "30"
    assert refused.json()["error"] == "insufficient_storage"
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["detail"]["disk"].startswith("low:")
    assert temp_files(data) == []
    assert fed.status(server).received == 0

    filler.unlink()
    assert fed.upload(server, 1, ORGS[0], body).status_code == 201
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert fed.status(server).received == 1


def _fill(path: Path, leave: int) -> None:
    """Write `path` until fewer than `leave` bytes are free on its filesystem."""
    chunk = b"\0" * (64 << 10)
    with path.open("wb") as f:
        try:
            while (st := os.statvfs(path)).f_bavail * st.f_frsize >= leave:
                f.write(chunk[: max(4096, min(len(chunk), st.f_bavail * st.f_frsize - leave))])
                f.flush()
        except OSError:
            pass  # the disk filled up on this write


# -- 5. slow upload bodies -------------------------------------------------------------------


@pytest.fixture
def paced_server(servers: list[ServerProcess], tmp_path: Path) -> tuple[ServerProcess, Fed]:
    pace = ["--upload-idle-s", "2", "--upload-min-kib-s", "1"]
    servers.append(start_server(tmp_path / "data", extra_args=pace))
    return servers[-1], create_federation(servers[-1], _spec())


def _open_upload(server: ServerProcess, fed: Fed, body: bytes, first: int) -> socket.socket:
    """A raw upload whose headers and first `first` body bytes are sent; the rest is up to
    the caller."""
    url = urlsplit(server.url)
    sock = socket.create_connection((url.hostname, url.port))
    head = (
        f"PUT /v1/federations/{fed.info.id}/rounds/1/update HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\n"
        f"Authorization: Bearer {fed.keys[ORGS[0]]}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:first])
    return sock


def _answer(sock: socket.socket, trickle: bytes, timeout: float) -> tuple[str, float]:
    """Send `trickle` a byte a second (nothing when empty) until the server answers; the
    status line (or "closed") and how long it took."""
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < timeout:
        readable, _, _ = select.select([sock], [], [], 1.0)
        if readable:
            data = sock.recv(4096)
            return (data.split(b"\r\n")[0].decode() if data else "closed"), (
                time.monotonic() - start
            )
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except OSError:
                return "closed", time.monotonic() - start
            sent += 1
    pytest.fail(f"no answer within {timeout:g} s")


def test_a_trickling_upload_body_is_dropped_with_408(paced_server):
    server, fed = paced_server
    body = delta(fed, 1, ORGS[0], fed.status(server).global_version)
    with _open_upload(server, fed, body, first=16) as sock:
        answer, _ = _answer(sock, body[16:], timeout=30)  # the floor applies after 10 s
    assert answer.startswith("HTTP/1.1 408") or answer == "closed", answer
    wait_for(lambda: temp_files(server.data_dir) == [] or None, 5, "the temp file to go")
    assert fed.status(server).received == 0


def test_a_stalled_upload_body_is_dropped_with_408_after_the_idle_timeout(paced_server):
    server, fed = paced_server
    body = delta(fed, 1, ORGS[0], fed.status(server).global_version)
    with _open_upload(server, fed, body, first=16) as sock:
        answer, seconds = _answer(sock, b"", timeout=15)
    assert answer.startswith("HTTP/1.1 408"), answer
    assert seconds >= 1.5  # the idle timeout (2 s), not a refusal of the request itself
    wait_for(lambda: temp_files(server.data_dir) == [] or None, 5, "the temp file to go")
