"""Aggregation throughput and memory: FedTune's streaming FedAvg against Flower's `aggregate`.

N deltas of S MiB (float32, shaped like transformer blocks) are written as
safetensors blobs into a temporary directory, then averaged, on the same
inputs in the same process, by:

- FedTune: `get_strategy("fedavg")` over the blob paths (deltas memory-mapped,
  one accumulator per tensor);
- Flower: each delta loaded into numpy arrays the way a Flower server holds
  client results (`safetensors.numpy.load_file`), then
  `flwr.server.strategy.aggregate.aggregate`.

Both timings start from the blob paths, with the files warm in the page cache
(they were just written). Throughput is input bytes read (N x S) per second,
best of --repeat. Peak extra memory is the growth of the process's resident
*anonymous* memory (`RssAnon` in /proc/self/status, sampled every 0.5 ms by a
thread, plus once when the call returns, result still alive) over its value
just before the call. Anonymous memory is what the aggregation itself owns:
memory-mapped blob pages are page cache (`RssFile`), shared and reclaimable, so
they are reported separately, not counted.

Usage: python benchmarks/aggregation.py [--n 16] [--size-mb 64] [--repeat 3] [--sweep]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator_service.aggregation import UpdateInput, get_strategy
from shared.blobs import DeltaMetadata, encode_state
from shared.spec import AggregationSpec

MIB = 1 << 20
GIB = 1 << 30
SWEEP = (4, 16, 32)

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
    seconds: float
    extra_anon: int
    extra_file: int
    result: dict[str, np.ndarray]


def run_fedtune(old: dict[str, torch.Tensor], updates: list[UpdateInput]) -> tuple[Run, str]:
    fedavg = get_strategy("fedavg")
    order = random.sample(updates, len(updates))  # arrival order must not matter
    with PeakMemory() as mem:
        start = time.perf_counter()
        result = fedavg(old, order, AggregationSpec(weighting="num_examples"), {})
        seconds = time.perf_counter() - start
    digest = hashlib.sha256(encode_state(result.state)).hexdigest()
    arrays = {k: v.numpy() for k, v in result.state.items()}
    return Run(seconds, mem.extra(), mem.extra("RssFile"), arrays), digest


def run_flower(
    old: dict[str, torch.Tensor], updates: list[UpdateInput], aggregate: Callable[..., Any]
) -> Run:
    from safetensors.numpy import load_file

    names = sorted(old)
    with PeakMemory() as mem:
        start = time.perf_counter()
        results = []
        for u in updates:
            arrays = load_file(str(u.path))
            results.append(([arrays[k] for k in names], u.num_examples))
        mean = aggregate(results)
        seconds = time.perf_counter() - start
    del results
    out = {k: old[k].numpy() + m for k, m in zip(names, mean, strict=True)}
    return Run(seconds, mem.extra(), mem.extra("RssFile"), out)


def _gib_s(n_bytes: int, seconds: float) -> float:
    return n_bytes / GIB / seconds


def bench(n: int, size_mb: float, repeat: int, root: Path, flower: Callable | None) -> dict:
    """Write the deltas, time both sides `repeat` times, check they agree; print and return."""
    shapes = model_layout(int(size_mb * MIB))
    delta_bytes = 4 * sum(int(np.prod(s)) for s in shapes.values())
    updates = write_deltas(root, n, shapes)
    os.sync()  # no writeback of the fresh blobs competing with either side's timing
    gen = torch.Generator().manual_seed(12345)
    old = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    total = n * delta_bytes
    print(
        f"\ninputs: {n} deltas x {delta_bytes / MIB:.1f} MiB float32 ({len(shapes)} tensors each),"
        f" {total / MIB:.0f} MiB in all, page cache warm"
    )

    ours, digests = [], set()
    for _ in range(repeat):
        run, digest = run_fedtune(old, updates)
        ours.append(run)
        digests.add(digest)
        gc.collect()
    best = min(ours, key=lambda r: r.seconds)
    peak = max(r.extra_anon for r in ours)
    row: dict[str, Any] = {"n": n, "ours_gib_s": _gib_s(total, best.seconds), "ours_peak": peak}
    print(
        f"fedtune fedavg   : {best.seconds:.3f} s best of {repeat} -> "
        f"{row['ours_gib_s']:.2f} GiB/s; peak extra RssAnon {peak / MIB:.1f} MiB "
        f"({peak / delta_bytes:.2f}x one delta); RssFile +{best.extra_file / MIB:.0f} MiB "
        "(mapped page cache, not counted)"
    )
    print(
        f"deterministic    : {'yes' if len(digests) == 1 else 'NO'} ({repeat} runs in shuffled "
        f"arrival order, {len(digests)} distinct result sha256)"
    )
    if flower is None:
        print("flower           : not importable; install the `bench` extra to compare")
        return row

    theirs = []
    for _ in range(repeat):
        theirs.append(run_flower(old, updates, flower))
        gc.collect()
    fbest = min(theirs, key=lambda r: r.seconds)
    fpeak = max(r.extra_anon for r in theirs)
    row.update(flower_gib_s=_gib_s(total, fbest.seconds), flower_peak=fpeak)
    print(
        f"flower aggregate : {fbest.seconds:.3f} s best of {repeat} -> "
        f"{row['flower_gib_s']:.2f} GiB/s (load_file + aggregate); peak extra RssAnon "
        f"{fpeak / MIB:.1f} MiB ({fpeak / delta_bytes:.2f}x one delta)"
    )
    diff = max(float(np.max(np.abs(best.result[k] - fbest.result[k]))) for k in old)
    same = all(np.allclose(best.result[k], fbest.result[k], rtol=1e-6, atol=1e-7) for k in old)
    print(
        f"same average     : {'yes' if same else 'NO'} (max |diff| {diff:.2e}; "
        "np.allclose rtol=1e-6 atol=1e-7)"
    )
    speed = row["ours_gib_s"] / row["flower_gib_s"]
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
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side (default 3)")
    parser.add_argument(
        "--sweep", action="store_true", help=f"run N = {', '.join(map(str, SWEEP))}"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.size_mb <= 0 or args.repeat < 1:
        parser.error("--n and --repeat must be at least 1 and --size-mb positive")

    print(_machine())
    flower = _flower_aggregate()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedtune-bench-agg-") as tmp:
        for n in SWEEP if args.sweep else (args.n,):
            rows.append(bench(n, args.size_mb, args.repeat, Path(tmp), flower))
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (1 min)")
    if len(rows) > 1:
        print("\nsweep (peak extra RssAnon in MiB; throughput in GiB/s):")
        print(
            f"{'N':>4} {'fedtune GiB/s':>14} {'fedtune peak':>13} {'flower GiB/s':>13} {'flower peak':>12}"
        )
        for r in rows:
            print(
                f"{r['n']:>4} {r['ours_gib_s']:>14.2f} {r['ours_peak'] / MIB:>13.1f} "
                f"{r.get('flower_gib_s', float('nan')):>13.2f} "
                f"{r.get('flower_peak', 0) / MIB:>12.1f}"
            )


if __name__ == "__main__":
    main()
