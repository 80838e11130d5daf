"""Upload ingest: many clients PUT deltas at once to a real aggregator process on 127.0.0.1.

For each body size a fresh `fedtune-server serve` process gets a federation
whose manifest is that size: ViT-B/16 (FedTune's registered config, seeded
random init) with LoRA on the attention query and value projections, the rank
chosen so that one float32 delta is the requested size (r = 28, 114, 455 for
4, 16, 64 MiB). 32 registered clients (threads, one HTTP connection each)
upload at the same moment; the quorum is set above the number of clients, so
what is measured is ingest alone (stream to a temp file, hash, validate,
fsync, commit), not aggregation.

Printed per size: aggregate throughput (MiB of bodies accepted per second of
wall time, first byte sent to last 201 received) and the server's peak memory
growth over its idle value just before the uploads, sampled every 20 ms with
psutil: RSS, and RssAnon (anonymous memory, what the process itself holds).
Bodies are never held in memory by the server: each upload in flight holds one
1 MiB buffer and each worker thread checking values 512 KiB, so the growth is
set by the number of concurrent uploads, not by the body size.

Usage: python benchmarks/ingest.py [--clients 32] [--sizes 4,16,64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.local_federation import ServerProcess, start_server
from shared.api import FederationInfo, RoundStatus
from shared.blobs import DeltaMetadata

MIB = 1 << 20
ARCH = "google/vit-base-patch16-224-in21k"
# LoRA on query and value of 12 blocks of width 768: A (r x 768) and B (768 x r) each.
LORA_PARAMS_PER_RANK = 12 * 2 * 2 * 768
HEAD_PARAMS = 768 * 2 + 2  # the new linear head for two classes
CHUNK = MIB


def lora_rank(size_mb: float) -> int:
    return max(1, round((size_mb * MIB / 4 - HEAD_PARAMS) / LORA_PARAMS_PER_RANK))


def spec(rank: int, clients: int) -> dict:
    return {
        "name": f"ingest-lora-r{rank}",
        "model": {"family": "hf_vit", "arch": ARCH, "pretrained": None, "base_source": "server"},
        "task": {"classes": ["a", "b"]},
        "method": {"name": "lora", "options": {"r": rank, "alpha": rank, "targets": ["attn"]}},
        "rounds": {"total": 1, "quorum": clients + 1, "min_updates": clients + 1},
    }


def start(data_dir: Path, max_upload_mb: float) -> ServerProcess:
    """A fresh `fedtune-server serve` with the given upload limit (admin token generated)."""
    return start_server(
        data_dir,
        extra_args=["--max-upload-mb", str(max_upload_mb)],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "FEDTUNE_LOG_LEVEL": "warning"},
    )


def _rss(proc: psutil.Process) -> tuple[int, int]:
    rss = proc.memory_info().rss
    anon = 0
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, anon


class ServerMemory:
    """Peak RSS and RssAnon of the server process, sampled every 20 ms by a thread."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.base = _rss(self.proc)
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            rss, anon = _rss(self.proc)
            self.peak = (max(self.peak[0], rss), max(self.peak[1], anon))

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        return self.peak[0] - self.base[0], self.peak[1] - self.base[1]


@dataclass
class Delta:
    """Shared tensor data plus one header per client (only `__metadata__` differs)."""

    entries: dict
    data: memoryview

    @classmethod
    def for_manifest(cls, info: FederationInfo) -> Delta:
        entries, offset = {}, 0
        for name in sorted(info.manifest):
            nbytes = 4 * int(np.prod(info.manifest[name].shape))
            entries[name] = {
                "dtype": "F32",
                "shape": info.manifest[name].shape,
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        rng = np.random.default_rng(0)
        data = (rng.standard_normal(offset // 4, dtype=np.float32) * 1e-3).tobytes()
        return cls(entries, memoryview(data))

    def prefix(self, meta: DeltaMetadata) -> bytes:
        header = json.dumps({**self.entries, "__metadata__": meta.to_safetensors()}).encode()
        header += b" " * (-len(header) % 8)
        return struct.pack("<Q", len(header)) + header

    def body(self, prefix: bytes) -> Iterator[bytes | memoryview]:
        yield prefix
        for start in range(0, len(self.data), CHUNK):
            yield self.data[start : start + CHUNK]


def setup(server: ServerProcess, rank: int, clients: int) -> tuple[FederationInfo, dict[str, str]]:
    with server.http(timeout=600) as c:
        r = c.post("/v1/federations", json=spec(rank, clients))
        r.raise_for_status()
        info = FederationInfo.model_validate(r.json())
        r = c.post(f"/v1/federations/{info.id}/enrollment-tokens", json={"uses": clients})
        r.raise_for_status()
        token = r.json()["token"]
        keys = {}
        for i in range(clients):
            r = c.post("/v1/clients", json={"enrollment_token": token, "name": f"org-{i:02d}"})
            r.raise_for_status()
            keys[r.json()["client_id"]] = r.json()["api_key"]
    return info, keys


def upload_all(server: ServerProcess, info: FederationInfo, keys: dict[str, str]) -> dict:
    """Every client PUTs its delta at once; returns wall time, statuses and memory growth."""
    delta = Delta.for_manifest(info)
    with server.http() as c:
        status = RoundStatus.model_validate(
            c.get(f"/v1/federations/{info.id}/rounds/current").json()
        )
    prefixes = {
        cid: delta.prefix(
            DeltaMetadata(
                federation=info.id,
                round=1,
                base_version=status.global_version,
                num_examples=10 + i,
            )
        )
        for i, cid in enumerate(sorted(keys))
    }
    results: dict[str, int | str] = {}
    start_gate = threading.Barrier(len(keys) + 1)

    def put(cid: str) -> None:
        size = len(prefixes[cid]) + len(delta.data)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        with server.http(keys[cid], timeout=600) as c:
            start_gate.wait()
            try:
                r = c.put(
                    f"/v1/federations/{info.id}/rounds/1/update",
                    content=delta.body(prefixes[cid]),
                    headers=headers,
                )
                results[cid] = r.status_code
            except httpx.HTTPError as exc:
                results[cid] = type(exc).__name__

    threads = [threading.Thread(target=put, args=(cid,)) for cid in keys]
    for t in threads:
        t.start()
    time.sleep(1.0)  # idle server before the baseline sample
    memory = ServerMemory(server.proc.pid)
    start_gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    rss, anon = memory.stop()
    body = len(next(iter(prefixes.values()))) + len(delta.data)
    return {"seconds": seconds, "body": body, "results": results, "rss": rss, "anon": anon}


def bench(size_mb: float, clients: int, root: Path) -> dict:
    rank = lora_rank(size_mb)
    work = root / f"size-{size_mb:g}"
    (work / "data").mkdir(parents=True)
    server = start(work / "data", max_upload_mb=size_mb * 1.25 + 1)
    try:
        info, keys = setup(server, rank, clients)
        out = upload_all(server, info, keys)
    finally:
        server.stop()
    ok = sum(1 for v in out["results"].values() if v == 201)
    total = ok * out["body"]
    out.update(size_mb=size_mb, rank=rank, ok=ok, mib_s=total / MIB / out["seconds"])
    print(
        f"{clients} clients x {out['body'] / MIB:.2f} MiB (LoRA r={rank}): {ok}/{clients} "
        f"accepted in {out['seconds']:.2f} s -> {out['mib_s']:.0f} MiB/s; server peak growth "
        f"RSS {out['rss'] / MIB:+.1f} MiB, RssAnon {out['anon'] / MIB:+.1f} MiB"
    )
    failed = {k: v for k, v in out["results"].items() if v != 201}
    if failed:
        print(f"  not accepted: {failed}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--sizes", default="4,16,64", help="body sizes in MiB (4,16,64)")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    if args.clients < 1 or not sizes or min(sizes) <= 0:
        parser.error("--clients must be at least 1 and --sizes positive numbers")
    print(
        f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / (1 << 30):.1f} GiB, "
        f"Python {platform.python_version()}, httpx {httpx.__version__}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedtune-bench-ingest-") as tmp:
        for size in sizes:
            rows.append(bench(size, args.clients, Path(tmp)))
    if len(rows) > 1:
        print("\nbody MiB  accepted  MiB/s  server RSS growth MiB  server RssAnon growth MiB")
        for r in rows:
            print(
                f"{r['body'] / MIB:>8.2f}  {r['ok']:>5}/{args.clients:<2}  {r['mib_s']:>5.0f}  "
                f"{r['rss'] / MIB:>21.1f}  {r['anon'] / MIB:>25.1f}"
            )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
