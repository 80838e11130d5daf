"""Long-poll fan-out: N registered clients wait on the current round; how fast does a new round
reach all of them, and what does waiting cost the server?

One `fedtune-server serve` process (SQLite by default, or `--database-url` for PostgreSQL)
gets a tiny federation whose rounds close at quorum 1. For each level N (default 100, 300,
1,000, 3,000) N real client API keys each hold one long-poll
(`GET …/rounds/current?wait_s=60&revision=R`) from an asyncio process, one connection per
poller. Once every poll has been sent and has waited two seconds, the server's CPU time is
sampled over an idle window (what waiting costs), then one more client uploads a zero delta,
which closes the round and opens the next. Each poller records when its answer arrived;
fan-out latency is that instant minus the new round's `opened_at` (same machine clock).

Printed per level: errors (non-200 answers or transport errors), pollers that had to ask
again (answered before the new round: a server that ends a long-poll at every change does
that), fan-out p50 / p99 / max, the server's CPU while idle-waiting and during the fan-out
(percent of one core), its RSS and open file descriptors while holding the polls. The peer is
the ceiling of the same run: the fan-out cannot beat one answer's latency on an idle
connection (printed first as `baseline`). Pollers wait as `fedtune-client train` does between
rounds (`after_round`), each on its own keep-alive connection spoken by hand (asyncio
streams), so that the client side is not what is measured.

Usage: python benchmarks/longpoll.py [--levels 100,300,1000,3000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.local_federation import ServerProcess, start_server
from shared.api import FederationInfo, RoundRecord, RoundStatus
from shared.blobs import DeltaMetadata, encode_state, torch_dtype

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 60.0
IDLE_WINDOW_S = 5.0


def _raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _spec(rounds: int) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "tiny-clip-bias.yaml").read_text())
    spec["name"] = "longpoll-bench"
    spec["rounds"] = {"total": rounds, "quorum": 1, "min_updates": 1, "deadline_s": 3600}
    return spec


@dataclass
class Federation:
    server: ServerProcess
    info: FederationInfo
    keys: list[str]
    trigger_key: str
    transport_dtype: str = "float32"


def setup(server: ServerProcess, clients: int, rounds: int) -> Federation:
    with server.http(timeout=600) as c:
        r = c.post("/v1/federations", json=_spec(rounds))
        r.raise_for_status()
        info = FederationInfo.model_validate(r.json())
        r = c.post(
            f"/v1/federations/{info.id}/enrollment-tokens",
            json={"uses": clients + 1, "expires_in_s": 3600},
        )
        r.raise_for_status()
        token = r.json()["token"]
        keys = []
        for i in range(clients + 1):
            r = c.post("/v1/clients", json={"enrollment_token": token, "name": f"poller-{i:05d}"})
            r.raise_for_status()
            keys.append(r.json()["api_key"])
    return Federation(server, info, keys[1:], keys[0], info.spec.transport.dtype)


def trigger(fed: Federation) -> RoundStatus:
    """Upload a zero delta for the current round with the trigger key: the round closes."""
    with fed.server.http(fed.trigger_key) as c:
        status = RoundStatus.model_validate(
            c.get(f"/v1/federations/{fed.info.id}/rounds/current").raise_for_status().json()
        )
        dtype = torch_dtype(fed.transport_dtype)
        zeros = {n: torch.zeros(t.shape, dtype=dtype) for n, t in fed.info.manifest.items()}
        meta = DeltaMetadata(
            federation=fed.info.id,
            round=status.round,
            base_version=status.global_version,
            num_examples=1,
        )
        body = encode_state(zeros, meta.to_safetensors())
        c.put(
            f"/v1/federations/{fed.info.id}/rounds/{status.round}/update",
            content=body,
            headers={"Content-Type": "application/octet-stream"},
        ).raise_for_status()
    return status


def opened_at(fed: Federation, number: int) -> float:
    with fed.server.http() as c:
        records = [
            RoundRecord.model_validate(x)
            for x in c.get(f"/v1/federations/{fed.info.id}/rounds").raise_for_status().json()
        ]
    return next(r.opened_at.timestamp() for r in records if r.round == number)


@dataclass
class Level:
    pollers: int
    errors: int = 0
    missed: int = 0
    latencies: list[float] = field(default_factory=list)
    idle_cpu: float = 0.0
    fanout_cpu: float = 0.0
    rss_mib: float = 0.0
    fds: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)


class _Connection:
    """One poller's keep-alive HTTP/1.1 connection, spoken by hand: a general client's
    connection pool costs more per request at a thousand connections than the server does,
    and would be measured instead of it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, base_url: str) -> _Connection:
        url = httpx.URL(base_url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        return cls(reader, writer)

    async def get(self, target: str, key: str) -> tuple[int, bytes]:
        self.writer.write(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
        )
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length:")
        )
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def _poll(
    base_url: str, path: str, key: str, status: RoundStatus, arrived: list[Any]
) -> None:
    """Long-poll as `fedtune-client train` does between rounds (`after_round`: the others'
    uploads do not end the wait), again after a timeout, until a later round shows."""
    conn: _Connection | None = None
    polls = 0
    try:
        conn = await _Connection.open(base_url)
        revision = status.revision
        while True:
            # `revision` too: a server without `after_round` ends the wait at any change
            target = f"{path}?wait_s={WAIT_S}&after_round={status.round}&revision={revision}"
            code, raw = await conn.get(target, key)
            polls += 1
            if code != 200:
                arrived.append((time.time(), code, raw.decode(errors="replace"), polls))
                return
            body = json.loads(raw)
            if body["round"] > status.round:
                arrived.append((time.time(), 200, body, polls))
                return
            revision = body["revision"]
    except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as exc:
        arrived.append((time.time(), type(exc).__name__, None, polls))
    finally:
        if conn is not None:
            conn.close()


async def _settle(proc: psutil.Process, limit_s: float = 60.0) -> None:
    """Wait until the server has taken in the polls: its CPU under a quarter of a core for
    a second (or `limit_s` passes)."""
    await asyncio.sleep(2.0)
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        cpu0 = _cpu(proc)
        await asyncio.sleep(1.0)
        if _cpu(proc) - cpu0 < 0.25:
            return


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


async def run_level(fed: Federation, n: int, proc: psutil.Process) -> Level:
    keys = fed.keys[:n]
    path = f"/v1/federations/{fed.info.id}/rounds/current"
    with fed.server.http() as c:
        status = RoundStatus.model_validate(c.get(path).raise_for_status().json())
    arrived: list[Any] = []
    level = Level(n)
    tasks = [asyncio.create_task(_poll(fed.server.url, path, k, status, arrived)) for k in keys]
    await _settle(proc)  # every request sent, authenticated and waiting
    cpu0, t0 = _cpu(proc), time.monotonic()
    await asyncio.sleep(IDLE_WINDOW_S)
    level.idle_cpu = 100 * (_cpu(proc) - cpu0) / (time.monotonic() - t0)
    level.rss_mib = proc.memory_info().rss / (1 << 20)
    level.fds = proc.num_fds()
    cpu1, t1 = _cpu(proc), time.monotonic()
    closed = await asyncio.to_thread(trigger, fed)
    await asyncio.gather(*tasks)
    level.fanout_cpu = 100 * (_cpu(proc) - cpu1) / (time.monotonic() - t1)
    opened = await asyncio.to_thread(opened_at, fed, closed.round + 1)
    for when, code, _body, polls in arrived:
        if code != 200:
            level.errors += 1
            level.error_kinds[str(code)] = level.error_kinds.get(str(code), 0) + 1
            continue
        level.latencies.append(when - opened)
        level.missed += polls > 1  # answered before the new round (it had to ask again)
    return level


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def baseline(fed: Federation) -> float:
    """Median latency of a plain, non-waiting GET of the current round (the ceiling)."""
    url = f"/v1/federations/{fed.info.id}/rounds/current"
    times = []
    with fed.server.http(fed.keys[0]) as c:
        for _ in range(30):
            t = time.perf_counter()
            c.get(url).raise_for_status()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--levels", default="100,300,1000,3000")
    p.add_argument("--database-url", help="e.g. postgresql+psycopg://… (default: SQLite)")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    fd_limit = _raise_fd_limit()
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, httpx {httpx.__version__}; fd limit {fd_limit}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="fedtune-longpoll-") as tmp:
        extra = ["--limit-concurrency", str(max(levels) * 2 + 100)]
        extra += ["--max-connections", str(max(levels) * 2 + 100)]
        extra += ["--max-polls-per-client", "4"]
        if args.database_url:
            extra += ["--database-url", args.database_url]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "FEDTUNE_LOG_LEVEL": "warning"}
        server = start_server(Path(tmp) / "data", extra_args=extra, env=env)
        try:
            proc = psutil.Process(server.proc.pid)
            store = "PostgreSQL" if args.database_url else "SQLite"
            print(f"server: 1 process, {store}; registering {max(levels) + 1} clients…")
            fed = setup(server, max(levels), rounds=len(levels) + 5)
            print(f"baseline: one GET of the current round on an idle connection, median "
                  f"{1000 * baseline(fed):.1f} ms")  # fmt: skip
            print()
            print(
                f"{'pollers':>7}  {'errors':>6}  {'missed':>6}  {'p50 ms':>8}  {'p99 ms':>8}  "
                f"{'max ms':>8}  {'idle CPU %':>10}  {'fan-out CPU %':>13}  {'RSS MiB':>8}  "
                f"{'fds':>5}"
            )
            for n in levels:
                lv = asyncio.run(run_level(fed, n, proc))
                print(
                    f"{lv.pollers:>7}  {lv.errors:>6}  {lv.missed:>6}  "
                    f"{1000 * _pct(lv.latencies, 0.5):>8.0f}  "
                    f"{1000 * _pct(lv.latencies, 0.99):>8.0f}  "
                    f"{1000 * max(lv.latencies, default=float('nan')):>8.0f}  "
                    f"{lv.idle_cpu:>10.1f}  {lv.fanout_cpu:>13.1f}  {lv.rss_mib:>8.1f}  "
                    f"{lv.fds:>5}" + (f"  errors: {lv.error_kinds}" if lv.error_kinds else "")
                )
        finally:
            server.stop()
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
