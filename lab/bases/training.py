"""What both pre-training loops share: the parsed recipe, the schedule, seeds, progress."""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from lab.bases.glyphs import GlyphBatch, GlyphConfig, GlyphData

__all__ = [
    "Log",
    "Progress",
    "Recipe",
    "adamw",
    "generator",
    "prefetched",
    "run_steps",
    "threads",
]

Log = Callable[[str], None]
T = TypeVar("T")


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a base's weights (a recipe JSON's `recipe` section)."""

    data: GlyphConfig
    steps: int  # optimiser steps
    batch_size: int
    lr: float  # peak learning rate (AdamW)
    warmup_steps: int  # linear warm-up, then cosine decay to `final_lr_ratio` * lr
    weight_decay: float  # on matrices only; biases, norms and embeddings are not decayed
    seed: int  # model init, data stream and evaluation batch all derive from it
    threads: int  # torch CPU threads of the training step (part of the recipe: it can change
    # the bits); a second thread makes the next batch meanwhile
    eval_samples: int = 1000  # size of the fresh held-out batch for the recorded metric
    final_lr_ratio: float = 0.0
    label_smoothing: float = 0.0  # classification objective only

    @classmethod
    def parse(cls, recipe: dict[str, Any]) -> Recipe:
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(recipe) - fields)
        if unknown:
            raise ValueError(f"recipe: unknown setting {unknown[0]!r}")
        values = {k: v for k, v in recipe.items() if k != "data"}
        return cls(data=GlyphConfig.from_recipe(recipe["data"]), **values)

    def lr_at(self, step: int) -> float:
        """Linear warm-up to `lr`, then half a cosine down to `final_lr_ratio * lr`."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.final_lr_ratio
        return self.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded from (seed, purpose): one independent stream per use."""
    digest = hashlib.sha256(f"fedtune-base:{seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def prefetched(produce: Callable[[], T], count: int, threads: int) -> Iterator[T]:
    """`count` results of `produce()`, in order, each made on a worker thread ahead of use.

    One worker calls `produce` strictly one call after another, so a seeded
    generator inside it yields the same stream as a plain loop would; the
    batch is just ready sooner (torch ops release the GIL, so making the next
    batch overlaps the training step on a second core).
    """
    with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        pending = deque(pool.submit(produce) for _ in range(min(2, count)))
        for made in range(count):
            result = pending.popleft().result()
            if made + len(pending) + 1 < count:
                pending.append(pool.submit(produce))
            yield result


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run with `n` torch CPU threads, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Progress:
    """Logs the step, the running loss and the time left about every `every` seconds."""

    def __init__(self, total: int, log: Log, every: float = 30.0) -> None:
        self.total, self.log, self.every = total, log, every
        self.started = self.last = time.perf_counter()
        self.loss_sum, self.loss_n = 0.0, 0

    def update(self, step: int, loss: float) -> None:
        self.loss_sum += loss
        self.loss_n += 1
        now = time.perf_counter()
        if now - self.last < self.every and step + 1 != self.total:
            return
        done = step + 1
        elapsed = now - self.started
        left = elapsed / done * (self.total - done)
        self.log(
            f"  step {done}/{self.total} ({100 * done // self.total} %), "
            f"loss {self.loss_sum / self.loss_n:.3f}, {_minutes(elapsed)} elapsed, "
            f"about {_minutes(left)} left"
        )
        self.last, self.loss_sum, self.loss_n = now, 0.0, 0


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def adamw(
    model: torch.nn.Module,
    recipe: Recipe,
    no_decay: Callable[[str], bool],
    betas: tuple[float, float],
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only: not on biases, norms, or what `no_decay` names."""
    decay: list[torch.nn.Parameter] = []
    rest: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and not no_decay(name) else rest).append(p)
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=betas, eps=eps)


def run_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: GlyphData,
    recipe: Recipe,
    log: Log,
    loss_of: Callable[[GlyphBatch], torch.Tensor],
    after_step: Callable[[], None] = lambda: None,
) -> None:
    """The recipe's steps: its seeded batch stream (made a step ahead), its learning-rate
    schedule, one optimiser step per batch; the model is left in eval mode."""
    stream = generator(recipe.seed, "data")
    progress = Progress(recipe.steps, log)
    model.train()
    batches = prefetched(
        lambda: data.sample(recipe.batch_size, stream), recipe.steps, recipe.threads
    )
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr_at(step)
        loss = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        after_step()
        progress.update(step, float(loss.detach()))
    model.eval()
