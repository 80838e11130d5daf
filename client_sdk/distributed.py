"""Several devices in one organisation: DistributedDataParallel, one process per device.

`fedtune-client train --devices N` spawns N processes (or runs under torchrun,
which sets RANK and WORLD_SIZE). Rank 0 alone talks to the server: it fetches
the federation, the model and each round's global state, sends them to the
other ranks over a gloo control group, and uploads the one delta. Every rank
trains on its part of each global batch (`SeededBatchSampler`): the spec's
`batch_size` is the global batch, every rank takes every step (an empty part
too), and each rank's loss is weighted so that DDP's mean of the gradients is
the gradient of the global batch's mean loss: N ranks take the steps one
process would (up to float rounding). A rank's FedTuneError reaches the parent
of `spawn` as one. The training group uses nccl on CUDA and gloo on CPU; each
CUDA rank needs a GPU of its own. Training loss, accuracy and throughput in
the round's metrics are over every rank's examples; `skipped_images` counts
what rank 0 met.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from client_sdk._client import FedTuneClient
from client_sdk._exceptions import FedTuneError, UsageError
from client_sdk.data import load_local_data
from client_sdk.participate import Participant, ParticipateOptions
from client_sdk.sync import _load_checked
from client_sdk.training import DeviceError, LocalTrainer, RoundResult, resolve_device
from client_sdk.workdir import WorkDir
from shared.tuning import build

__all__ = [
    "DistributedTrainer",
    "check_devices",
    "follow",
    "init_process_group",
    "participate_rank",
    "rank_device",
    "spawn",
    "torchrun_rank",
    "wrap",
]

log = logging.getLogger("client_sdk")
# Ranks other than 0 wait on the control group while rank 0 long-polls the server
# between rounds, which may take hours: the groups must not time out meanwhile.
WAIT = timedelta(days=30)


def torchrun_rank() -> tuple[int, int] | None:
    """(rank, world size) when started by torchrun, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def _device_count(device: torch.device) -> int | None:
    """How many devices of `device`'s kind this machine has (None: no limit, the CPU)."""
    if device.type == "cuda":
        return torch.cuda.device_count()
    return 1 if device.type == "mps" else None


def check_devices(world: int, device: torch.device) -> None:
    """Refuse more ranks than this machine has GPUs: ranks sharing one would not train
    faster, and NCCL refuses them."""
    count = _device_count(device)
    if count is not None and world > count:
        raise DeviceError(
            f"--devices {world}: this machine has {count} {device.type.upper()} device(s); "
            f"pass --devices {count} or fewer (or --device cpu)"
        )


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: its own GPU on CUDA (LOCAL_RANK, else the rank), else `device`."""
    if device.type != "cuda":
        return device
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    if local >= torch.cuda.device_count():
        raise DeviceError(
            f"local rank {local} has no GPU of its own: this machine has "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", local)


def init_process_group(rank: int, world: int, device_type: str) -> dist.ProcessGroup:
    """Join the training group (nccl on CUDA, gloo otherwise); return the gloo control group."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=WAIT)
    control = dist.new_group(backend="gloo", timeout=WAIT)
    assert isinstance(control, dist.ProcessGroup)
    return control


def spawn(
    fn: Callable[..., None],
    world: int,
    *args: Any,
    explain: Callable[[BaseException], str] = str,
) -> None:
    """Run `fn(rank, world, *args)` in `world` processes on a free local port.

    A rank that fails with a FedTuneError or OSError makes this raise a FedTuneError
    (a UsageError if it was one) whose message is `explain(error)`; anything else
    surfaces as torch's `ProcessException`, traceback included.
    """
    import socket

    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    failures = mp.get_context("spawn").SimpleQueue()
    # It says when it terminates the other ranks after one failed: noise beside the error.
    torch_log = logging.getLogger("torch.multiprocessing.spawn")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        mp.spawn(_rank, args=(fn, world, failures, explain, *args), nprocs=world, join=True)
    except ProcessException as exc:
        reported: dict[int, tuple[bool, str]] = {}
        while not failures.empty():
            rank, usage, message = failures.get()
            reported.setdefault(rank, (usage, message))
        failure = reported.get(exc.error_index) or next(iter(reported.values()), None)
        if failure is None:
            raise
        usage, message = failure
        raise (UsageError if usage else FedTuneError)(message) from None
    finally:
        torch_log.setLevel(level)


def _rank(
    rank: int,
    fn: Callable[..., None],
    world: int,
    failures: Any,
    explain: Callable[[BaseException], str],
    *args: Any,
) -> None:
    """One process of `spawn`: an error the user can act on goes back to the parent as text
    (the exception itself may not survive pickling)."""
    try:
        fn(rank, world, *args)
    except (FedTuneError, OSError) as exc:
        failures.put((rank, isinstance(exc, UsageError), explain(exc)))
        sys.exit(1)


def wrap(trainer: LocalTrainer) -> None:
    """Run the trainer's steps through DDP (a collective: every rank calls it together)."""
    cuda = trainer.device.type == "cuda"
    ids = [trainer.device.index or torch.cuda.current_device()] if cuda else None
    trainer.net = DistributedDataParallel(trainer.net, device_ids=ids)


def _send(control: dist.ProcessGroup, message: object) -> None:
    dist.broadcast_object_list([message], src=0, group=control)


def _receive(control: dist.ProcessGroup) -> Any:
    box: list[object] = [None]
    dist.broadcast_object_list(box, src=0, group=control)
    return box[0]


class DistributedTrainer:
    """Rank 0's trainer: each round's global state goes to the other ranks first.

    Anything else is the wrapped `LocalTrainer`'s (evaluation runs on rank 0 alone).
    """

    def __init__(self, trainer: LocalTrainer, control: dist.ProcessGroup) -> None:
        self.trainer, self.control = trainer, control

    def __getattr__(self, name: str) -> Any:
        return getattr(self.trainer, name)

    def run_round(
        self, round: int, global_state: Mapping[str, torch.Tensor], **kwargs: Any
    ) -> RoundResult:
        state = {k: v.detach().cpu() for k, v in global_state.items()}
        _send(self.control, ("round", round, state))
        return self.trainer.run_round(round, global_state, **kwargs)

    def train(self, round: int) -> Any:
        """Train one round without writing a delta (the other ranks' part of `run_round`)."""
        _send(self.control, ("round", round, None))
        return self.trainer.train(round)

    def stop(self) -> None:
        _send(self.control, ("stop",))


def follow(trainer: LocalTrainer, control: dist.ProcessGroup) -> None:
    """A rank other than 0: train each round rank 0 announces, until it says stop."""
    while True:
        message = _receive(control)
        if message[0] == "stop":
            return
        _, round, state = message
        if state is not None:
            trainer.bm.load_trainable_state(state)
        trainer.train(round)


def participate_rank(
    rank: int,
    world: int,
    connect: Callable[[], contextlib.AbstractContextManager[FedTuneClient]],
    client_id: str,
    options: ParticipateOptions,
) -> None:
    """One rank of `fedtune-client train --devices N`; rank 0 alone connects to the server."""
    device = resolve_device(options.device)
    control = init_process_group(rank, world, device.type)
    try:
        if device.type == "cuda":
            torch.cuda.set_device(rank_device(device))
        options = replace(options, rank=rank, world=world, progress=options.progress and not rank)
        if rank == 0:
            with connect() as client:
                participant = Participant(client, client_id, options)
                _send(control, ("setup", participant.info))
                wrap(participant.trainer)
                lead = DistributedTrainer(participant.trainer, control)
                participant.trainer = lead  # type: ignore[assignment]
                try:
                    participant.run()
                finally:
                    lead.stop()
        else:
            info = _receive(control)[1]
            spec = info.spec
            base = None
            if spec.model.base_source == "server":
                workdir = WorkDir(options.work_dir, info.id, client_id)
                base = _load_checked(workdir.base_path(info.base_fingerprint), "base model")
            trainer = LocalTrainer(
                spec,
                build(spec, base_state=base),
                load_local_data(options.data, spec.task.classes),
                device=device,
                val_fraction=options.val_fraction,
                organisation=options.organisation,
                num_workers=options.num_workers,
                rank=rank,
                world=world,
            )
            wrap(trainer)
            follow(trainer, control)
    finally:
        dist.destroy_process_group()
