"""Local training for one round: evaluate the global state, fine-tune, write the delta.

Only the method's trainable tensors are optimised; the delta is
`local_trainable - global_trainable` in the spec's transport dtype, written
atomically as safetensors with `DeltaMetadata`.

Reproducible: every random draw of a round's training comes from generators
seeded by `derive_seed("train", spec.seed, organisation, round, purpose)`:
"shuffle" for the DataLoader's order, "augment:<epoch>" for each sample's
augmentation (see `ImageDataset`) and "step" for torch's global RNG during the
steps (dropout), restored afterwards. The organisation is its registered name
(the server's client id is random, so two runs of a federation would differ).
New modules are initialised from the spec's seed when the model is built, and
every trainable tensor is then overwritten by the global state. Deterministic
algorithms are on while training, so the same round on the same kind of
machine (CPU model, thread count, library versions) gives the same delta
bytes, whatever the DataLoader's worker count. On CUDA, cuBLAS is given a fixed
workspace (`CUBLAS_WORKSPACE_CONFIG`, unless already set) and ops that have no
deterministic kernel only warn: a repeat on the same GPU model, driver and
libraries is expected to be bit-identical, not one on another GPU or on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from client_sdk._exceptions import FedTuneError
from client_sdk.data import (
    DataError,
    ImageDataset,
    LocalData,
    SeededBatchSampler,
    default_num_workers,
    derive_seed,
    make_loader,
    split_train_val,
)
from client_sdk.dp import DPSGD, DPSGDError
from shared.blobs import (
    MAX_METRIC_ABS,
    DeltaMetadata,
    atomic_save_state,
    sha256_file,
    torch_dtype,
)
from shared.spec import FederationSpec
from shared.tuning import BuiltModel, train_mode
from shared.tuning.groups import param_groups

__all__ = [
    "DeviceError",
    "LocalTrainer",
    "Precision",
    "RoundResult",
    "ShardLoss",
    "accuracy",
    "device_precision",
    "hits",
    "resolve_device",
    "select_precision",
]

log = logging.getLogger("client_sdk")
EVAL_BATCH = 256
# cuBLAS's deterministic setting (needed before its first use in the process).
CUBLAS_WORKSPACE = ":4096:8"


class DeviceError(FedTuneError):
    """A requested device that this machine does not have."""


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device must exist."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA device is available (use --device auto or cpu)")
    if name == "mps" and not has_mps:
        raise DeviceError("--device mps: Apple MPS is not available (use --device auto or cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"--device must be auto, cpu, cuda or mps, not {name!r}")
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: autocast to `dtype` (None: fp32), loss scaled or not."""

    dtype: torch.dtype | None
    scaler: bool = False


def select_precision(device_type: str, *, bf16: bool, fp16: bool) -> Precision:
    """bf16 autocast where the device has it; else fp16 with a GradScaler; else fp32.

    CPU stays fp32 (its autocast is slower than fp32 on most CPUs). `bf16` and
    `fp16` say what the device supports (see `device_precision`).
    """
    if device_type == "cpu":
        return Precision(None)
    if device_type == "cuda" and bf16:
        return Precision(torch.bfloat16)
    if fp16:
        return Precision(torch.float16, scaler=True)
    return Precision(None)


def device_precision(device: torch.device) -> Precision:
    """`select_precision` with what `device` supports."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return select_precision("cuda", bf16=bf16, fp16=True)
    if device.type == "mps":
        return select_precision("mps", bf16=False, fp16=_mps_fp16_autocast())
    return select_precision(device.type, bf16=False, fp16=False)


def _mps_fp16_autocast() -> bool:
    """Whether this torch autocasts and scales fp16 on MPS (older releases do not)."""
    try:
        with torch.autocast("mps", dtype=torch.float16):
            pass
        torch.amp.GradScaler("mps")
    except (RuntimeError, ValueError, AssertionError):
        return False
    return True


def _has_conv(model: nn.Module) -> bool:
    """A convolutional patch embedding (or stem): channels_last speeds it up on CUDA."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@dataclass(frozen=True)
class RoundResult:
    round: int
    delta_path: Path
    sha256: str
    num_examples: int
    metrics: dict[str, float]


@dataclass
class _EpochStats:
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    steps: int = 0


def _summed_over_ranks(stats: _EpochStats, device: torch.device) -> _EpochStats:
    """Loss, hits and examples summed over the training group (a collective: every rank)."""
    totals = torch.tensor(
        [stats.loss_sum, stats.correct, stats.seen], dtype=torch.float64, device=device
    )
    dist.all_reduce(totals)
    loss_sum, correct, seen = totals.tolist()
    return replace(stats, loss_sum=loss_sum, correct=round(correct), seen=round(seen))


def hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many rows of `logits` rank their label first, on the logits' device (the labels
    may be on any device)."""
    return (logits.argmax(-1) == labels.to(logits.device)).sum()


@torch.no_grad()
def accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> float:
    """Top-1 accuracy of `model` in eval mode over (images, labels) batches (0.0 if none);
    empty batches are passed over."""
    model.eval()
    correct = total = 0
    for images, labels in batches:
        if not len(labels):
            continue
        with autocast():
            logits = model(images.to(device) if device is not None else images)
        correct += int(hits(logits, labels))
        total += len(labels)
    return correct / max(total, 1)


def reportable_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics the server accepts: a NaN, infinite or absurd one (a diverged loss) is
    left out with a warning, since the server refuses an update that reports it."""
    kept: dict[str, float] = {}
    for key, value in metrics.items():
        if math.isfinite(value) and abs(value) <= MAX_METRIC_ABS:
            kept[key] = value
        else:
            log.warning("metric %s is %r: left out of the report", key, value)
    return kept


class ShardLoss(nn.Module):
    """The summed cross-entropy of one rank's shard of a batch, and its logits.

    An empty shard (its images unreadable, or a last batch smaller than the world) gives
    a zero loss that still reaches every trainable tensor, so DDP's gradient hooks fire
    on that rank too and its all-reduces pair with the other ranks'.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not len(labels):
            trainable = [p.sum() for p in self.model.parameters() if p.requires_grad]
            return torch.stack(trainable).sum() * 0.0, None
        logits = self.model(images)
        return torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum"), logits


@contextlib.contextmanager
def _reproducible(device: torch.device, seed: int) -> Iterator[None]:
    """Torch's RNG (CPU and `device`) seeded and deterministic algorithms on; both restored."""
    mode = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        elif device.type == "mps":
            torch.mps.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(mode[0], warn_only=mode[1])


class LocalTrainer:
    """Holds the built model and the local split; runs one round at a time.

    `organisation` (its registered name) seeds local training together with
    the spec's seed and the round (see the module docstring); with "" every
    organisation draws the same random streams, still reproducibly.
    """

    def __init__(
        self,
        spec: FederationSpec,
        bm: BuiltModel,
        data: LocalData,
        *,
        device: torch.device,
        val_fraction: float,
        organisation: str = "",
        progress: bool = False,
        num_workers: int | None = None,
        rank: int = 0,
        world: int = 1,
        precision: Precision | None = None,
    ) -> None:
        self.spec, self.bm, self.device, self.progress = spec, bm, device, progress
        self.organisation = organisation
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        train, val = split_train_val(data.samples, val_fraction, seed=spec.seed)
        self.train_set = ImageDataset(train, bm.transform(True))
        self.val_set = ImageDataset(val, bm.transform(False))
        # DataLoader worker processes (per training process); results do not depend on it.
        self.num_workers = default_num_workers(world) if num_workers is None else num_workers
        self.rank, self.world = rank, world
        self.precision = device_precision(device) if precision is None else precision
        self.channels_last = device.type == "cuda" and _has_conv(bm.model)
        self.model = bm.model.to(device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # What a step runs: the `ShardLoss` of the model, or its DistributedDataParallel wrapper.
        self.net: nn.Module = ShardLoss(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.dp = self._dp_sgd()
        self.skipped: set[Path] = set()  # unreadable images met so far
        self._loaders: dict[str, tuple[int, DataLoader[object]]] = {}

    @property
    def num_examples(self) -> int:
        return len(self.train_set)

    def _dp_sgd(self) -> DPSGD | None:
        """DP-SGD for `local_training.dp` (see `client_sdk.dp`); None without it."""
        dp = self.spec.local_training.dp
        if dp is None:
            return None
        if self.world > 1:
            raise DPSGDError(
                "local_training.dp trains in one process: per-example clipping and the "
                "accounting do not span several training processes; train with one"
            )
        return DPSGD(self.model, dp, self.spec.local_training.batch_size, self.num_examples)

    def _grad_scaler(self) -> torch.amp.GradScaler:
        """A fresh loss scaler for one round: it scales only under fp16 autocast (see
        `Precision`), and its scale must not carry over, or a restarted client would not
        retrain the round exactly."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision.scaler)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.dtype)

    def _loader(self, split: str) -> DataLoader[object]:
        """The split's DataLoader, kept (with its workers) for the trainer's life."""
        kept = self._loaders.get(split)
        if kept is not None and kept[0] == self.num_workers:
            return kept[1]
        if split == "train":
            dataset = self.train_set
            batch = self.spec.local_training.batch_size
            sampler = SeededBatchSampler(len(dataset), batch, rank=self.rank, world=self.world)
        else:
            dataset, sampler = self.val_set, SeededBatchSampler(len(self.val_set), EVAL_BATCH)
        pin = self.device.type == "cuda"
        loader = make_loader(dataset, sampler, num_workers=self.num_workers, pin_memory=pin)
        self._loaders[split] = (self.num_workers, loader)
        return loader

    def _batches(
        self, loader: DataLoader[object], dataset: ImageDataset
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) on the device, copied asynchronously; unreadable images counted.

        A batch with no readable image is yielded empty: every rank takes every step."""
        for images, labels, skipped in loader:
            for i in skipped:
                file = dataset.samples[i][0]
                if file not in self.skipped:
                    log.warning("skipping unreadable image %s", file)
                    self.skipped.add(file)
            images = images.to(self.device, non_blocking=True)
            if self.channels_last and len(labels):
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels.to(self.device, non_blocking=True)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Accuracy of the current weights on the local validation split (None if empty)."""
        if not len(self.val_set):
            return None
        batches = self._batches(self._loader("val"), self.val_set)
        return accuracy(self.model, batches, self.device, self._autocast)

    def _optimizer(self) -> torch.optim.Optimizer:
        """A fresh optimiser for the round: the trainable tensors in a group with
        `weight_decay` and one without (`no_decay`: see `shared.tuning.groups`)."""
        lt = self.spec.local_training
        groups = param_groups(self.model, lt.weight_decay, lt.no_decay)
        optimizer: torch.optim.Optimizer
        if lt.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lt.lr, momentum=lt.momentum)
        else:
            optimizer = torch.optim.AdamW(groups, lr=lt.lr)
        return self.dp.wrap(optimizer) if self.dp is not None else optimizer

    def _scheduler(self, optimizer: torch.optim.Optimizer, steps: int) -> LambdaLR:
        """The round's learning-rate schedule, stepped once per optimiser step.

        It spans the round's `steps` (capped by `max_steps`) and restarts every
        round: `warmup_steps` rise linearly from 0 (step s runs at s / warmup_steps
        of lr), then lr holds (constant) or follows a half cosine that would reach
        0 at the step after the round's last (cosine).
        """
        lt = self.spec.local_training
        total = min(steps, lt.max_steps) if lt.max_steps is not None else steps
        warmup = lt.warmup_steps

        def factor(step: int) -> float:
            if step < warmup:
                return step / warmup
            if lt.schedule == "constant":
                return 1.0
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        return LambdaLR(optimizer, factor)

    def _clip(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the global L2 norm of the optimiser's gradients to `max_grad_norm` (if set).

        Call between backward and the optimiser step, on true gradients: with a
        GradScaler, after `scaler.unscale_(optimizer)`.
        """
        max_norm = self.spec.local_training.max_grad_norm
        if max_norm is not None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    def seed(self, round: int, purpose: str) -> int:
        """The seed of one kind of random draw in this organisation's `round`."""
        return derive_seed("train", self.spec.seed, self.organisation, round, purpose)

    def train(self, round: int) -> _EpochStats:
        """`local_training.epochs` epochs over the train split, stopping at `max_steps`.

        A function of (spec, organisation, round, global state, data) alone.
        """
        with _reproducible(self.device, self.seed(round, "step")):
            stats = self._train(round)
        if self.world > 1:
            stats = _summed_over_ranks(stats, self.device)
        if not stats.seen:
            raise DataError(f"none of the {len(self.train_set)} training images could be read")
        return stats

    def _readable_in_batch(self, shard: int) -> int:
        """Readable examples in the global batch of which this rank holds `shard` (a
        collective when world > 1)."""
        if self.world == 1:
            return shard
        count = torch.tensor([shard], device=self.device)
        dist.all_reduce(count)
        return int(count.item())

    def _train(self, round: int) -> _EpochStats:
        lt = self.spec.local_training
        optimizer = self._optimizer()
        scaler = self._grad_scaler()
        loader = self._loader("train")
        sampler = loader.batch_sampler
        assert isinstance(sampler, SeededBatchSampler)
        scheduler = self._scheduler(optimizer, lt.epochs * len(loader))
        stats = _EpochStats()
        train_mode(self.model)  # frozen modules and BatchNorm stay in eval mode
        start = time.perf_counter()
        for epoch in range(1, lt.epochs + 1):
            sampler.set_epoch(
                self.seed(round, f"shuffle:{epoch}"), self.seed(round, f"augment:{epoch}")
            )
            bar = tqdm(
                self._batches(loader, self.train_set),
                total=len(sampler),
                desc=f"round {round} epoch {epoch}/{lt.epochs}",
                unit="batch",
                disable=not self.progress,
                leave=False,
            )
            for images, labels in bar:
                readable = self._readable_in_batch(len(labels))
                if not readable:  # on every rank: the batch's images were all unreadable
                    continue
                loss_sum, correct = self._step(optimizer, scaler, images, labels, readable)
                scheduler.step()
                stats.loss_sum += loss_sum
                stats.correct += correct
                stats.seen += len(labels)
                stats.steps += 1
                rate = stats.seen / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss_sum / max(len(labels), 1):.4f}", ex_s=f"{rate:.0f}")
                if lt.max_steps is not None and stats.steps >= lt.max_steps:
                    return stats
        return stats

    def _step(
        self,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        images: torch.Tensor,
        labels: torch.Tensor,
        readable: int,
    ) -> tuple[float, int]:
        """One optimiser step on the mean loss over the global batch's `readable` examples;
        returns this shard's summed loss and hits.

        Each rank's summed loss is weighted by world / readable, so DDP's mean of the ranks'
        gradients is the single-process gradient, however unevenly the batch was split.
        """
        if self.dp is not None:  # fp32, per-example gradients clipped and noised by the optimiser
            optimizer.zero_grad(set_to_none=True)
            mean_loss, correct = self.dp.per_example_grads(images, labels)
            optimizer.step()
            return mean_loss * len(labels), correct
        with self._autocast():
            loss_sum, logits = self.net(images, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss_sum * (self.world / readable)).backward()  # scaled only for fp16
        scaler.unscale_(optimizer)  # true gradients for clipping (no-op without fp16)
        self._clip(optimizer)
        scaler.step(optimizer)
        scaler.update()
        correct = int(hits(logits, labels)) if logits is not None else 0
        return float(loss_sum.detach()), correct

    def run_round(
        self,
        round: int,
        global_state: Mapping[str, torch.Tensor],
        *,
        federation_id: str,
        base_version: str,
        dest: Path,
    ) -> RoundResult:
        """Load the global state, evaluate it, train, and write the delta to `dest`."""
        self.bm.load_trainable_state(global_state)
        val_accuracy = self.evaluate()
        started = time.perf_counter()
        stats = self.train(round)
        seconds = time.perf_counter() - started
        metrics = {
            "train_loss": stats.loss_sum / max(stats.seen, 1),
            "train_accuracy": stats.correct / max(stats.seen, 1),
            "examples_per_s": stats.seen / max(seconds, 1e-9),
            "train_seconds": seconds,
            "val_examples": float(len(self.val_set)),
            "skipped_images": float(len(self.skipped)),
        }
        if val_accuracy is not None:
            metrics["val_accuracy"] = val_accuracy
        if self.dp is not None:
            metrics.update(self.dp.epsilons(round, stats.steps))
        metrics = reportable_metrics(metrics)
        delta = self.delta(global_state)
        meta = DeltaMetadata(
            federation=federation_id,
            round=round,
            base_version=base_version,
            num_examples=self.num_examples,
            metrics=metrics,
        )
        atomic_save_state(dest, delta, meta.to_safetensors())
        return RoundResult(round, dest, sha256_file(dest), self.num_examples, metrics)

    def evaluate_state(self, global_state: Mapping[str, torch.Tensor]) -> float | None:
        """Load a global state (the final one) and return its validation accuracy (None if
        the validation split is empty)."""
        self.bm.load_trainable_state(global_state)
        return self.evaluate()

    @property
    def num_val_examples(self) -> int:
        return len(self.val_set)

    def delta(self, global_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`local - global` per trainable tensor, in the transport dtype."""
        dtype = torch_dtype(self.spec.transport.dtype)
        local = self.bm.trainable_state()
        return {
            name: (local[name].float() - global_state[name].float()).to(dtype) for name in local
        }
