"""Aggregation throughput and memory: FedTune's streaming FedAvg against Flower's `aggregate`.

N deltas of S MiB (float32, shaped like transformer blocks) are written as
safetensors blobs into a temporary directory, then averaged, on the same
inputs in the same benchmark run, by:

- FedTune: `get_strategy("fedavg")` over the blob paths (deltas memory-mapped,
  one accumulator per tensor);
- Flower: each delta loaded into numpy arrays the way a Flower server holds
  client results (`safetensors.numpy.load_file`), then
  `flwr.server.strategy.aggregate.aggregate`;
- the read ceiling: one pass over the same mapped bytes, each tensor summed
  (`Tensor.sum`), nothing written. No aggregation can read its input faster,
  so FedTune's throughput is also printed as a fraction of it.

Every timed run happens in a fresh worker process (this script with
--worker), the sides interleaved, so none inherits another's heap and
all see the same machine load. Timings start from the blob paths, with the
files warm in the page cache (they were just written). Throughput is input
bytes read (N x S) per second, best of the warm calls (the median and the
cold first call are printed too).
Peak extra memory is the growth of the worker's resident *anonymous* memory
(`RssAnon` in /proc/self/status, sampled every 0.5 ms by a thread, plus once
when the call returns, result still alive) over its value just before the
call. Anonymous memory is what the aggregation itself owns: memory-mapped blob
pages are page cache (`RssFile`), shared and reclaimable, so they are reported
separately, not counted.

Usage: python benchmarks/aggregation.py [--n 16] [--size-mb 64] [--repeat 3] [--sweep]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator_service.aggregation import UpdateInput, aggregate
from shared.blobs import Blob, DeltaMetadata, encode_state
from shared.spec import AggregationSpec

MIB = 1 << 20
GIB = 1 << 30
SWEEP = (4, 16, 32)
WORKERS = 2  # fresh worker processes per side, interleaved fedtune, ceiling, flower, ...

# One ViT-B/16 encoder block's trainable tensors (d=768, mlp=3072): about 27 MiB.
BLOCK = {
    "norm1.weight": (768,),
    "norm1.bias": (768,),
    "attn.qkv.weight": (2304, 768),
    "attn.qkv.bias": (2304,),
    "attn.proj.weight": (768, 768),
    "attn.proj.bias": (768,),
    "norm2.weight": (768,),
    "norm2.bias": (768,),
    "mlp.fc1.weight": (3072, 768),
    "mlp.fc1.bias": (3072,),
    "mlp.fc2.weight": (768, 3072),
    "mlp.fc2.bias": (768,),
}


def model_layout(size_bytes: int) -> dict[str, tuple[int, ...]]:
    """Tensor shapes totalling exactly `size_bytes` of float32: whole blocks, then a remainder."""
    left = size_bytes // 4
    shapes: dict[str, tuple[int, ...]] = {}
    block = 0
    while left > 0:
        for name, shape in BLOCK.items():
            numel = int(np.prod(shape))
            if numel > left:
                shapes[f"blocks.{block}.rest"] = (left,)
                return shapes
            shapes[f"blocks.{block}.{name}"] = shape
            left -= numel
        block += 1
    return shapes


def write_deltas(root: Path, n: int, shapes: dict[str, tuple[int, ...]]) -> list[UpdateInput]:
    updates = []
    for i in range(n):
        gen = torch.Generator().manual_seed(i)
        tensors = {k: torch.randn(s, generator=gen).mul_(1e-2) for k, s in shapes.items()}
        num_examples = 100 + 37 * i
        meta = DeltaMetadata(
            federation="bench", round=1, base_version="0" * 64, num_examples=num_examples
        )
        path = root / f"client-{i:03d}.safetensors"
        save_file(tensors, str(path), metadata=meta.to_safetensors())
        updates.append(
            UpdateInput(client_id=f"client-{i:03d}", path=path, num_examples=num_examples)
        )
        del tensors
    return updates


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


class PeakMemory:
    """Peak growth of RssAnon (and RssFile) while the block runs, sampled by a thread."""

    def __init__(self, interval_s: float = 0.0005):
        self.interval_s = interval_s
        self.base: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for key, value in _proc_status().items():
            self.peak[key] = max(self.peak.get(key, 0), value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self.base = _proc_status()
        self.peak = dict(self.base)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()
        self.sample()

    def extra(self, key: str = "RssAnon") -> int:
        return self.peak[key] - self.base[key]


@dataclass
class Run:
    """One worker process: a cold first call (memory, time) then warm timed calls."""

    cold_seconds: float
    warm_seconds: list[float]
    extra_anon: int
    extra_file: int
    digests: list[str]


def _inputs(root: Path) -> tuple[dict[str, torch.Tensor], list[UpdateInput]]:
    manifest = json.loads((root / "inputs.json").read_text())
    updates = [UpdateInput(u["client_id"], Path(u["path"]), u["num_examples"]) for u in manifest]
    return load_file(root / "global.safetensors"), updates


def _fedtune_call(
    old: dict[str, torch.Tensor], updates: list[UpdateInput], seed: int
) -> Callable[[], dict[str, torch.Tensor]]:
    order = random.Random(seed).sample(updates, len(updates))  # arrival order must not matter
    return lambda: aggregate(old, order, AggregationSpec(weighting="num_examples"), {}).state


def _ceiling_call(updates: list[UpdateInput]) -> Callable[[], float]:
    """Read every mapped byte once (a sum per tensor), write nothing."""

    def call() -> float:
        total = 0.0
        for u in updates:
            blob = Blob.open(u.path)
            for name in blob.names():
                total += float(blob.tensor(name).sum())
        return total

    return call


def _flower_call(
    old: dict[str, torch.Tensor], updates: list[UpdateInput]
) -> Callable[[], list[np.ndarray]]:
    from flwr.server.strategy.aggregate import aggregate
    from safetensors.numpy import load_file as load_numpy

    names = sorted(old)

    def call() -> list[np.ndarray]:
        results = []
        for u in updates:
            arrays = load_numpy(str(u.path))
            results.append(([arrays[k] for k in names], u.num_examples))
        return aggregate(results)

    return call


def worker(side: str, root: Path, seed: int, warm: int) -> None:
    """In this fresh process: one cold call under the memory sampler, then `warm` timed calls.

    Prints a JSON `Run` and leaves the last result (the new global state) in `root`.
    """
    old, updates = _inputs(root)
    names = sorted(old)
    seconds, digests = [], []
    out: dict[str, torch.Tensor] = {}
    cold = PeakMemory()
    for i in range(1 + warm):
        call: Callable[[], Any]
        if side == "fedtune":
            call = _fedtune_call(old, updates, seed + i)
        elif side == "flower":
            call = _flower_call(old, updates)
        else:
            call = _ceiling_call(updates)
        # the sampler thread only watches the cold call: it costs CPU
        with cold if i == 0 else contextlib.nullcontext():
            start = time.perf_counter()
            result = call()
            seconds.append(time.perf_counter() - start)
        if side == "ceiling":
            result = {"sum": torch.tensor([result], dtype=torch.float64)}
        if side == "flower":
            result = {k: old[k] + torch.from_numpy(m) for k, m in zip(names, result, strict=True)}
        out = result
        digests.append(hashlib.sha256(encode_state(out)).hexdigest())
        del result
        gc.collect()
    (root / f"result-{side}.safetensors").write_bytes(encode_state(out))
    run = Run(seconds[0], seconds[1:], cold.extra(), cold.extra("RssFile"), digests)
    print(json.dumps(asdict(run)))


def _spawn(side: str, root: Path, seed: int, warm: int) -> Run:
    cmd = [sys.executable, __file__, "--worker", side, "--dir", str(root)]
    cmd += ["--seed", str(seed), "--repeat", str(warm), "--threads", str(torch.get_num_threads())]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side} worker failed:\n{done.stderr}")
    return Run(**json.loads(done.stdout.strip().splitlines()[-1]))


def _gib_s(n_bytes: int, seconds: float) -> float:
    return n_bytes / GIB / seconds


def _report(label: str, runs: list[Run], total: int, delta_bytes: int) -> tuple[float, int]:
    """Print one side's line; returns (best warm GiB/s, peak extra RssAnon of the cold calls)."""
    warm = [t for r in runs for t in r.warm_seconds]
    cold = [r.cold_seconds for r in runs]
    peak = max(r.extra_anon for r in runs)
    best = _gib_s(total, min(warm))
    print(
        f"{label} : {min(warm):.3f} s best of {len(warm)} warm -> {best:.2f} GiB/s "
        f"(median {_gib_s(total, median(warm)):.2f}, cold first call {_gib_s(total, min(cold)):.2f});"
        f" peak extra RssAnon {peak / MIB:.1f} MiB ({peak / delta_bytes:.2f}x one delta), "
        f"RssFile +{max(r.extra_file for r in runs) / MIB:.0f} MiB"
    )
    return best, peak


def bench(n: int, size_mb: float, repeat: int, root: Path, with_flower: bool) -> dict:
    """Write the deltas, run both sides in interleaved fresh workers, check they agree."""
    shapes = model_layout(int(size_mb * MIB))
    delta_bytes = 4 * sum(int(np.prod(s)) for s in shapes.values())
    updates = write_deltas(root, n, shapes)
    (root / "inputs.json").write_text(
        json.dumps([{**asdict(u), "path": str(u.path)} for u in updates])
    )
    gen = torch.Generator().manual_seed(12345)
    save_file(
        {k: torch.randn(s, generator=gen) for k, s in shapes.items()},
        str(root / "global.safetensors"),
    )
    os.sync()  # no writeback of the fresh blobs competing with either side's timing
    total = n * delta_bytes
    print(
        f"\ninputs: {n} deltas x {delta_bytes / MIB:.1f} MiB float32 ({len(shapes)} tensors each),"
        f" {total / MIB:.0f} MiB in all, page cache warm; per side {WORKERS} fresh worker"
        f" processes (interleaved), each 1 cold + {repeat} warm calls"
    )
    ours: list[Run] = []
    theirs: list[Run] = []
    ceiling: list[Run] = []
    for i in range(WORKERS):
        ours.append(_spawn("fedtune", root, seed=100 * i, warm=repeat))
        ceiling.append(_spawn("ceiling", root, seed=100 * i, warm=repeat))
        if with_flower:
            theirs.append(_spawn("flower", root, seed=100 * i, warm=repeat))
    row: dict[str, Any] = {"n": n}
    row["ours_gib_s"], row["ours_peak"] = _report("fedtune fedavg  ", ours, total, delta_bytes)
    row["ceiling_gib_s"], _ = _report("read ceiling    ", ceiling, total, delta_bytes)
    print(
        f"of the ceiling   : {row['ours_gib_s'] / row['ceiling_gib_s']:.0%} "
        "(FedTune's best warm throughput over one read-and-sum pass of the same bytes)"
    )
    digests = {d for r in ours for d in r.digests}
    runs = sum(len(r.digests) for r in ours)
    print(
        f"deterministic    : {'yes' if len(digests) == 1 else 'NO'} ({runs} runs, each in its "
        f"own shuffled arrival order: {len(digests)} distinct result sha256)"
    )
    if not with_flower:
        print("flower           : not importable; install the `bench` extra to compare")
        return row
    row["flower_gib_s"], row["flower_peak"] = _report(
        "flower aggregate", theirs, total, delta_bytes
    )
    a = load_file(root / "result-fedtune.safetensors")
    b = load_file(root / "result-flower.safetensors")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    same = all(np.allclose(a[k].numpy(), b[k].numpy(), rtol=1e-6, atol=1e-7) for k in a)
    print(
        f"same average     : {'yes' if same else 'NO'} (max |diff| {diff:.2e}; "
        "np.allclose rtol=1e-6 atol=1e-7)"
    )
    speed = row["ours_gib_s"] / row["flower_gib_s"]
    peak, fpeak = row["ours_peak"], row["flower_peak"]
    print(
        f"vs Flower        : {speed:.1f}x throughput, {peak / fpeak:.3f}x peak extra memory "
        f"(Flower needs {fpeak / max(peak, 1):.1f}x ours)"
    )
    for f in root.iterdir():
        f.unlink()
    return row


def _flower_aggregate() -> Callable | None:
    try:
        from flwr.server.strategy.aggregate import aggregate
    except ImportError:
        return None
    return aggregate


def _machine() -> str:
    import importlib.metadata as md

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "absent"

    return (
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, "
        f"safetensors {version('safetensors')}, flwr {version('flwr')}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=16, help="number of deltas (default 16)")
    parser.add_argument("--size-mb", type=float, default=64, help="MiB per delta (default 64)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="warm timed runs per worker process (default 3)"
    )
    parser.add_argument(
        "--sweep", action="store_true", help=f"run N = {', '.join(map(str, SWEEP))}"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in the workers (default: torch's)"
    )
    parser.add_argument(
        "--worker", choices=["fedtune", "flower", "ceiling"], help=argparse.SUPPRESS
    )
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, args.dir, args.seed, args.repeat)
        return
    if args.n < 1 or args.size_mb <= 0 or args.repeat < 1:
        parser.error("--n and --repeat must be at least 1 and --size-mb positive")

    print(_machine())
    with_flower = _flower_aggregate() is not None
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedtune-bench-agg-") as tmp:
        for n in SWEEP if args.sweep else (args.n,):
            rows.append(bench(n, args.size_mb, args.repeat, Path(tmp), with_flower))
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (1 min)")
    if len(rows) > 1:
        print("\nsweep (peak extra RssAnon in MiB; throughput in GiB/s):")
        print(
            f"{'N':>4} {'fedtune GiB/s':>14} {'of ceiling':>11} {'fedtune peak':>13} "
            f"{'flower GiB/s':>13} {'flower peak':>12}"
        )
        for r in rows:
            print(
                f"{r['n']:>4} {r['ours_gib_s']:>14.2f} {r['ours_gib_s'] / r['ceiling_gib_s']:>11.0%} "
                f"{r['ours_peak'] / MIB:>13.1f} "
                f"{r.get('flower_gib_s', float('nan')):>13.2f} "
                f"{r.get('flower_peak', 0) / MIB:>12.1f}"
            )


if __name__ == "__main__":
    main()
