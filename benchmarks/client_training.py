"""Local training throughput: input pipeline, step ceiling, LocalTrainer end to end.

On a generated JPEG folder (500x375 and up) this prints images/s of
1. the input pipeline alone (decode + train transform) by DataLoader worker count,
2. the training step on a batch already on the device (the ceiling),
3. the real `LocalTrainer` end to end, and its ratio to the ceiling;
then LocalTrainer start-up time on a `--startup-images` folder and the client's
RSS after start-up and after an epoch's worth of the pipeline (nothing decoded
is kept, so RSS must not grow with the folder).

    python benchmarks/client_training.py --device cpu --model tiny --images 256
    python benchmarks/client_training.py --device cuda --model vit-b16 --images 4096
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from client_sdk.data import ImageDataset, SeededBatchSampler, load_local_data, make_loader
from client_sdk.training import LocalTrainer
from shared.spec import parse_spec
from shared.tuning import build

CLASSES = ["a", "b"]
ARCH = {"tiny": "fedtune-tiny-vit", "vit-b16": "google/vit-base-patch16-224"}


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_folder(root: Path, n: int, *, pixels: bool = True) -> Path:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
    for i in range(n):
        path = root / CLASSES[i % 2] / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if pixels:
            w, h = 500 + 20 * (i % 8), 375 + 15 * (i % 8)
            Image.fromarray(np.roll(base, i, axis=1)).resize((w, h)).save(path, quality=90)
        else:
            path.write_bytes(b"")  # listing only: start-up must not open files
    return root


def spec(model: str, method: str, batch: int):
    return parse_spec(
        {
            "name": "bench",
            "model": {"family": "hf_vit", "arch": ARCH[model], "pretrained": None},
            "task": {"classes": CLASSES},
            "method": {"name": method},
            "local_training": {"epochs": 1, "batch_size": batch, "lr": 1e-3},
        }
    )


def pipeline_rate(root: Path, sp, workers: int, batch: int) -> float:
    samples = load_local_data(root, CLASSES).samples
    dataset = ImageDataset(samples, build(sp).transform(True))
    sampler = SeededBatchSampler(len(dataset), batch)
    loader = make_loader(dataset, sampler, num_workers=workers, pin_memory=False)
    sampler.set_epoch(1, 1)
    start, n = time.perf_counter(), 0
    for images, _, _ in loader:
        n += len(images)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", choices=sorted(ARCH), default="tiny")
    ap.add_argument("--method", default="bias")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="0,1,2", help="worker counts for the pipeline")
    ap.add_argument("--startup-images", type=int, default=20000)
    ap.add_argument("--rss-images", type=int, default=100000)
    args = ap.parse_args()
    device = torch.device(args.device)
    sp = spec(args.model, args.method, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "jpeg", args.images)
        print(f"{args.images} JPEGs 500x375..640x480, model {args.model}, method {args.method}")
        for w in map(int, args.workers.split(",")):
            rate = pipeline_rate(root, sp, w, args.batch_size)
            print(f"pipeline (decode + train transform), {w} workers: {rate:8.1f} images/s")

        trainer = LocalTrainer(
            sp, build(sp), load_local_data(root, CLASSES), device=device, val_fraction=0
        )
        shape = trainer.train_set[0][0].shape  # (3, H, W) as the model takes it
        images = torch.randn(args.batch_size, *shape, device=device)
        labels = torch.zeros(args.batch_size, dtype=torch.long, device=device)
        optimizer = trainer._optimizer()
        trainer.model.train()
        steps = max(3, args.images // args.batch_size)
        trainer._step(optimizer, images, labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            trainer._step(optimizer, images, labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ceiling = steps * args.batch_size / (time.perf_counter() - start)
        print(f"step ceiling (batch on device): {ceiling:8.1f} images/s")
        trainer.train(1)  # warm-up: workers start, kernels compile
        start = time.perf_counter()
        stats = trainer.train(2)
        e2e = stats.seen / (time.perf_counter() - start)
        print(f"LocalTrainer end to end ({trainer.num_workers} workers): {e2e:8.1f} images/s")
        print(f"end to end / ceiling: {e2e / ceiling:.0%}")

        big = make_folder(Path(tmp) / "listing", args.startup_images, pixels=False)
        start = time.perf_counter()
        LocalTrainer(sp, build(sp), load_local_data(big, CLASSES), device=device, val_fraction=0)
        print(
            f"LocalTrainer start-up, {args.startup_images} images: "
            f"{time.perf_counter() - start:.2f} s"
        )

        huge = make_folder(Path(tmp) / "rss", args.rss_images, pixels=False)
        for i, (f, _) in enumerate(load_local_data(huge, CLASSES).samples):
            if i < args.images:
                f.write_bytes((root / CLASSES[i % 2] / f"{i}.jpg").read_bytes())
        data = load_local_data(huge, CLASSES)
        LocalTrainer(sp, build(sp), data, device=device, val_fraction=0)
        print(f"RSS after start-up on {args.rss_images} images: {rss_mib():.0f} MiB")
        dataset = ImageDataset(data.samples[: args.images], build(sp).transform(True))
        for i in range(len(dataset)):
            dataset[i]
        print(f"RSS after {args.images} images through the pipeline: {rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
