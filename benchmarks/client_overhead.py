"""How much of a client's round is spent outside local training.

A real aggregator process on 127.0.0.1 and one in-process client (quorum 1)
running the real participate loop on the tiny CLIP; each round trains 200
optimiser steps. The loop's phases are timed by wrapping the participant's own
methods; everything that is not local training (long-poll, state download,
loading the state, writing the delta, upload, waiting for aggregation) counts
as overhead. Target: < 5 % of a round.

    python benchmarks/client_overhead.py [--rounds 4] [--steps 200]
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from client_sdk import FedTuneClient
from client_sdk.participate import Participant, ParticipateOptions
from lab.local_federation import start_server
from shared.spec import parse_spec

CLASSES = [str(i) for i in range(10)]


def _spec(rounds: int, steps: int) -> Any:
    return parse_spec(
        {
            "name": "bench-client-overhead",
            "model": {"family": "open_clip", "arch": "fedtune-tiny-clip", "pretrained": None},
            "task": {"classes": CLASSES, "prompt_template": "a photo of the digit {}."},
            "method": {"name": "bias", "train_head": True},
            "local_training": {"epochs": 1000, "max_steps": steps, "batch_size": 16, "lr": 1e-3},
            "rounds": {"total": rounds, "quorum": 1, "min_updates": 1, "deadline_s": 600},
        }
    )


def _images(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for c in CLASSES:
        for i in range(per_class):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            path = root / c / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


def _timed(times: dict[str, float], phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times[phase] += time.perf_counter() - start

    return wrapper


def _instrument(p: Participant, times: dict[str, float]) -> None:
    client, trainer = p.client, p.trainer
    client.current_round = _timed(times, "poll", client.current_round)  # type: ignore[method-assign]
    client.download_state = _timed(times, "download", client.download_state)  # type: ignore[method-assign]
    client.upload_update = _timed(times, "upload", client.upload_update)  # type: ignore[method-assign]
    trainer.train = _timed(times, "train", trainer.train)  # type: ignore[method-assign]
    trainer.evaluate = _timed(times, "evaluate", trainer.evaluate)  # type: ignore[method-assign]
    trainer.delta = _timed(times, "delta", trainer.delta)  # type: ignore[method-assign]
    trainer.bm.load_trainable_state = _timed(  # type: ignore[method-assign]
        times, "load_state", trainer.bm.load_trainable_state
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger().addFilter(lambda r: not str(r.msg).startswith("No pretrained weights"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = start_server(root / "server")
        try:
            admin = server.admin()
            info = admin.create_federation(_spec(args.rounds, args.steps))
            reg = FedTuneClient(server.url, allow_http=True).register_client(
                admin.create_enrollment_token(info.id).token, "bench-org"
            )
            client = FedTuneClient(server.url, api_key=reg.api_key, allow_http=True)
            options = ParticipateOptions(
                federation_id=info.id,
                data=_images(root / "data", 32),
                work_dir=root / "work",
                device="cpu",
                val_fraction=0.0,
                progress=False,
            )
            setup_start = time.perf_counter()
            participant = Participant(client, reg.client_id, options)
            setup = time.perf_counter() - setup_start
            times: dict[str, float] = defaultdict(float)
            _instrument(participant, times)
            start = time.perf_counter()
            participant.run()
            total = time.perf_counter() - start
        finally:
            server.stop()
    _report(times, total, setup, args)
    return 0


def _report(times: dict[str, float], total: float, setup: float, args: argparse.Namespace) -> None:
    train = times["train"]
    overhead = total - train
    print(
        f"client overhead: tiny CLIP (bias + head), {args.rounds} rounds x {args.steps} steps, "
        "real aggregator on 127.0.0.1, 1 torch thread"
    )
    print(f"  one-time setup (federation info, data, base download, model build): {setup:.2f} s")
    print(f"  {'phase':<12}{'s/round':>10}{'share':>9}")
    for phase in ("train", "poll", "download", "load_state", "evaluate", "delta", "upload"):
        print(f"  {phase:<12}{times[phase] / args.rounds:>10.4f}{times[phase] / total:>9.2%}")
    rest = overhead - sum(v for k, v in times.items() if k != "train")
    print(f"  {'other':<12}{rest / args.rounds:>10.4f}{rest / total:>9.2%}")
    print(
        f"  round time {total / args.rounds:.3f} s; outside local training: "
        f"{overhead / total:.2%} (target < 5%)"
    )


if __name__ == "__main__":
    sys.exit(main())
