"""CPU processes on gloo train the same round one process would: the same delta, and the
same training figures, also where a global batch does not split evenly or a rank's part of
it is empty. More ranks than GPUs are refused, and a rank's error reaches the parent of
`spawn` as one FedTuneError."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from client_sdk._exceptions import FedTuneError, UsageError
from client_sdk.data import load_local_data
from client_sdk.distributed import (
    DistributedTrainer,
    check_devices,
    follow,
    init_process_group,
    spawn,
    wrap,
)
from client_sdk.training import DeviceError, LocalTrainer
from shared.spec import parse_spec
from shared.tuning import build
from tests.images import textured, write_image_folder

CLASSES = ["cat", "dog"]


def _spec(batch_size: int = 4):
    # Shuffling and augmentation stay on: both are seeded per sample, whatever the rank.
    return parse_spec(
        {
            "name": "t",
            "model": {"family": "hf_vit", "arch": "fedtune-tiny-vit", "pretrained": None},
            "task": {"classes": CLASSES},
            "method": {"name": "bias"},
            # SGD: Adam would turn float noise in a zero gradient (key biases) into ±lr.
            "local_training": {
                "epochs": 2,
                "batch_size": batch_size,
                "lr": 0.1,
                "optimizer": "sgd",
            },
        }
    )


def _folder(root: Path, unreadable: int = 0) -> Path:
    """Textured images (a random crop of a flat one would not show), and `unreadable` files
    that are not images."""
    write_image_folder(root, CLASSES, 4, mean=textured, std=60)
    for i in range(unreadable):
        (root / CLASSES[i % 2] / f"broken-{i}.png").write_bytes(b"not a png")
    return root


def _trainer(root: Path, rank: int = 0, world: int = 1, batch_size: int = 4) -> LocalTrainer:
    spec = _spec(batch_size)
    data = load_local_data(root, CLASSES)
    return LocalTrainer(
        spec,
        build(spec),
        data,
        device=torch.device("cpu"),
        val_fraction=0,
        organisation="org-a",
        num_workers=0,
        rank=rank,
        world=world,
    )


def _rank_main(rank: int, world: int, root: Path, out: Path, batch_size: int = 4) -> None:
    torch.set_num_threads(1)
    control = init_process_group(rank, world, "cpu")
    try:
        trainer = _trainer(root, rank, world, batch_size)
        start = trainer.bm.trainable_state()
        wrap(trainer)
        if rank == 0:
            lead = DistributedTrainer(trainer, control)
            stats = lead.train(1)
            lead.stop()
            save_file(trainer.delta(start), str(out))
            out.with_suffix(".json").write_text(json.dumps(asdict(stats)))
        else:
            follow(trainer, control)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_the_single_process_delta(tmp_path):
    root = _folder(tmp_path / "data")
    out = tmp_path / "ddp.safetensors"

    spawn(_rank_main, 2, root, out)

    _assert_single_process_round(_trainer(root), out)


# (ranks, global batch, unreadable files) over 8 readable images
SPLITS = {
    "uneven parts (4 over 3 ranks: 1, 1, 2)": (3, 4, 0),
    "a last global batch smaller than the world (2 over 3: 0, 1, 1)": (3, 3, 0),
    "a rank whose part is an unreadable image": (2, 2, 2),
}


@pytest.mark.parametrize(("world", "batch_size", "unreadable"), SPLITS.values(), ids=SPLITS)
def test_ranks_give_the_single_process_delta_however_the_batch_splits(
    tmp_path, world, batch_size, unreadable
):
    root = _folder(tmp_path / "data", unreadable)
    out = tmp_path / "ddp.safetensors"

    spawn(_rank_main, world, root, out, batch_size)

    _assert_single_process_round(_trainer(root, batch_size=batch_size), out)


def _assert_single_process_round(single: LocalTrainer, out: Path) -> None:
    """The delta and figures rank 0 wrote to `out` are those `single` trains in round 1."""
    start = single.bm.trainable_state()
    stats = single.train(1)
    expected = single.delta(start)
    got = load_file(str(out))
    assert sorted(got) == sorted(expected)
    assert any(float(v.abs().sum()) > 0 for v in expected.values())
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-6)
    figures = json.loads(out.with_suffix(".json").read_text())
    assert (figures["seen"], figures["correct"], figures["steps"]) == (
        stats.seen,
        stats.correct,
        stats.steps,
    )
    assert figures["loss_sum"] == pytest.approx(stats.loss_sum, rel=1e-4)


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_more_ranks_than_gpus_are_refused(device):
    gpus = torch.cuda.device_count() if device == "cuda" else 1

    with pytest.raises(DeviceError, match=f"has {gpus} {device.upper()} device"):
        check_devices(gpus + 1, torch.device(device))


def test_cpu_ranks_are_not_limited_by_gpus():
    check_devices(64, torch.device("cpu"))


def _fail(rank: int, world: int, error: Exception) -> None:
    if rank == world - 1:
        raise error


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (FedTuneError("cannot reach the server"), FedTuneError),
        (UsageError("--data: no such folder"), UsageError),
        (FileNotFoundError(2, "No such file", "/x"), FedTuneError),
    ],
)
def test_a_ranks_error_reaches_the_parent_as_one_line(error, raised):
    with pytest.raises(raised) as caught:
        spawn(_fail, 2, error)

    assert type(caught.value) is raised and str(caught.value) == str(error)


def test_a_ranks_unexpected_error_keeps_its_traceback():
    with pytest.raises(mp.ProcessRaisedException, match="Traceback"):
        spawn(_fail, 2, RuntimeError("a bug"))
