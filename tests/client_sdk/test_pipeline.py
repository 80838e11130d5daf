"""The input pipeline: lazy decoding, unreadable images met in training, epoch seeds that
reach persistent workers, rank shards, worker counts and the precision chosen per device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from client_sdk import data as data_module
from client_sdk.data import (
    DataError,
    ImageDataset,
    SeededBatchSampler,
    default_num_workers,
    load_local_data,
    make_loader,
)
from client_sdk.training import LocalTrainer, Precision, select_precision
from shared.spec import parse_spec
from shared.tuning import build
from tests.images import textured, write_image_folder

CLASSES = ["cat", "dog"]


def _spec(epochs: int = 1):
    return parse_spec(
        {
            "name": "t",
            "model": {"family": "hf_vit", "arch": "fedtune-tiny-vit", "pretrained": None},
            "task": {"classes": CLASSES},
            "method": {"name": "bias"},
            "local_training": {"epochs": epochs, "batch_size": 2, "lr": 1e-2},
        }
    )


def _folder(root: Path, n: int = 3) -> Path:
    return write_image_folder(root, CLASSES, n, mean=textured, std=60)


def test_loading_decodes_nothing(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    monkeypatch.setattr(data_module, "_decode", lambda file: pytest.fail(f"decoded {file}"))

    data = load_local_data(root, CLASSES)

    assert len(data.samples) == 6


def _epoch_images(dataset: ImageDataset, workers: int, seeds: list[int]) -> list[torch.Tensor]:
    sampler = SeededBatchSampler(len(dataset), 4)
    loader = make_loader(dataset, sampler, num_workers=workers, pin_memory=False)
    out = []
    for seed in seeds:
        sampler.set_epoch(order_seed=seed, augment_seed=seed)
        out.append(torch.cat([images for images, _, _ in loader]))
    return out


def test_persistent_workers_see_each_epochs_seed(tmp_path):
    spec = _spec()
    samples = load_local_data(_folder(tmp_path), CLASSES).samples
    dataset = ImageDataset(samples, build(spec).transform(True))

    first, second = _epoch_images(dataset, workers=2, seeds=[1, 2])
    again = _epoch_images(dataset, workers=2, seeds=[1, 2])
    in_process = _epoch_images(dataset, workers=0, seeds=[1, 2])

    assert not torch.equal(first, second)
    assert torch.equal(again[0], first) and torch.equal(again[1], second)
    assert torch.equal(in_process[0], first) and torch.equal(in_process[1], second)


def _trainer(spec, root: Path, workers: int = 0) -> LocalTrainer:
    data = load_local_data(root, CLASSES)
    return LocalTrainer(
        spec, build(spec), data, device=torch.device("cpu"), val_fraction=0, num_workers=workers
    )


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_is_skipped_and_counted_in_the_metrics(tmp_path, workers):
    root = _folder(tmp_path / "data")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    trainer = _trainer(_spec(epochs=2), root, workers)
    state = trainer.bm.trainable_state()

    result = trainer.run_round(
        1, state, federation_id="f", base_version="ab" * 32, dest=tmp_path / "d.safetensors"
    )

    assert result.metrics["skipped_images"] == 1
    assert trainer.train(2).seen == 2 * 6  # two epochs of the six readable images


def test_no_readable_training_image_is_a_clear_error(tmp_path):
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.png").write_bytes(b"garbage")
    trainer = _trainer(_spec(), root)

    with pytest.raises(DataError, match="could be read"):
        trainer.train(1)


def test_rank_shards_make_up_the_single_process_batches():
    whole = SeededBatchSampler(11, 4)
    parts = [SeededBatchSampler(11, 4, rank=r, world=2) for r in range(2)]
    for s in (whole, *parts):
        s.set_epoch(order_seed=7, augment_seed=3)

    batches = list(whole)
    shards = list(zip(*parts, strict=True))

    assert len(shards) == len(parts[0]) == 3  # the last batch of 3 still splits 1 + 2
    assert [a + b for a, b in shards] == batches
    assert {seed for batch in batches for _, seed in batch} == {3}
    parts[0].n = parts[1].n = 9  # a last global batch of 1: rank 0's part is empty
    assert len(parts[0]) == len(list(parts[0])) == 3 and list(parts[0])[-1] == []


def test_worker_count_is_the_cores_less_one_at_most_eight(monkeypatch):
    for cores, world, expected in [(1, 1, 0), (2, 1, 1), (16, 1, 8), (64, 1, 8), (16, 2, 7)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda _, n=cores: set(range(n)))
        assert default_num_workers(world) == expected


@pytest.mark.parametrize(
    ("device", "bf16", "fp16", "expected"),
    [
        ("cuda", True, True, Precision(torch.bfloat16)),
        ("cuda", False, True, Precision(torch.float16, scaler=True)),
        ("mps", False, True, Precision(torch.float16, scaler=True)),
        ("mps", False, False, Precision(None)),
        ("cpu", True, True, Precision(None)),
    ],
)
def test_precision_follows_the_devices_capabilities(device, bf16, fp16, expected):
    assert select_precision(device, bf16=bf16, fp16=fp16) == expected
