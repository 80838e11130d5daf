"""One local round on the tiny ViT: the delta, its dtype and metadata, the step cap, and
that training is a function of (spec seed, organisation, round) alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from client_sdk.data import load_local_data
from client_sdk.training import (
    DeviceError,
    LocalTrainer,
    Precision,
    accuracy,
    hits,
    resolve_device,
)
from shared.blobs import DeltaMetadata, read_header
from shared.spec import parse_spec
from shared.tuning import build
from tests.images import textured, write_image_folder

CLASSES = ["cat", "dog"]


def _spec(dtype: str = "float32", max_steps: int | None = None, method: dict | None = None):
    return parse_spec(
        {
            "name": "t",
            "model": {"family": "hf_vit", "arch": "fedtune-tiny-vit", "pretrained": None},
            "task": {"classes": CLASSES},
            "method": method or {"name": "bias"},
            "local_training": {"epochs": 2, "batch_size": 2, "lr": 1e-2, "max_steps": max_steps},
            "transport": {"dtype": dtype},
        }
    )


def _folder(root: Path) -> Path:
    """Textured images (a random crop of a flat one would not show)."""
    return write_image_folder(root, CLASSES, 4, mean=textured, std=60)


def _trainer(
    tmp_path: Path, spec, organisation: str = "", precision: Precision | None = None
) -> LocalTrainer:
    bm = build(spec)
    data = load_local_data(_folder(tmp_path / "data"), CLASSES)
    return LocalTrainer(
        spec,
        bm,
        data,
        device=torch.device("cpu"),
        val_fraction=0.25,
        organisation=organisation,
        precision=precision,
    )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_delta_is_local_minus_global_in_the_transport_dtype(tmp_path, dtype):
    spec = _spec(dtype)
    trainer = _trainer(tmp_path, spec)
    global_state = trainer.bm.trainable_state()
    dest = tmp_path / "round-1.delta.safetensors"

    result = trainer.run_round(
        1, global_state, federation_id="fed_x", base_version="ab" * 32, dest=dest
    )

    local = trainer.bm.trainable_state()
    with safe_open(str(dest), framework="pt") as f:
        assert sorted(f.keys()) == sorted(global_state)
        for name in global_state:
            delta = f.get_tensor(name)
            assert delta.dtype == getattr(torch, dtype)
            expected = (local[name] - global_state[name]).to(delta.dtype)
            torch.testing.assert_close(delta, expected)
    assert any(float(v.abs().sum()) > 0 for v in local.values())
    meta = DeltaMetadata.from_safetensors(read_header(dest).metadata)
    assert (meta.federation, meta.round, meta.num_examples) == ("fed_x", 1, 6)
    assert {"train_loss", "val_accuracy", "examples_per_s", "val_examples"} <= set(meta.metrics)
    assert result.num_examples == 6 and result.metrics == meta.metrics


def test_max_steps_caps_the_optimiser_steps(tmp_path):
    trainer = _trainer(tmp_path, _spec(max_steps=2))

    stats = trainer.train(1)

    assert stats.steps == 2 and stats.seen == 4


def test_only_trainable_parameters_change(tmp_path):
    trainer = _trainer(tmp_path, _spec())
    before = {k: v.clone() for k, v in trainer.bm.base_state().items()}

    trainer.train(1)

    after = trainer.bm.base_state()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_requesting_a_missing_cuda_device_is_a_clear_error():
    with pytest.raises(DeviceError, match="no CUDA device"):
        resolve_device("cuda")


LORA_DROPOUT = {"name": "lora", "options": {"r": 2, "alpha": 4, "dropout": 0.5}}


def _delta_bytes(tmp_path: Path, organisation: str, round: int, workers: int = 0) -> dict:
    """Train a freshly built model one round (augmentation, dropout, shuffling in play)."""
    trainer = _trainer(tmp_path, _spec(method=LORA_DROPOUT), organisation)
    trainer.num_workers = workers
    start = trainer.bm.trainable_state()
    trainer.train(round)
    return {k: v.numpy().tobytes() for k, v in trainer.delta(start).items()}


def test_same_seed_organisation_and_round_give_the_same_delta_bytes(tmp_path):
    first = _delta_bytes(tmp_path, "org-a", 1)
    torch.manual_seed(12345)  # whatever the global RNG holds
    torch.rand(7)

    assert _delta_bytes(tmp_path, "org-a", 1) == first
    assert _delta_bytes(tmp_path, "org-b", 1) != first
    assert _delta_bytes(tmp_path, "org-a", 2) != first


def test_the_augmentation_depends_on_the_organisation_and_the_round(tmp_path):
    def crops(organisation: str, round: int) -> torch.Tensor:
        trainer = _trainer(tmp_path, _spec(), organisation)
        trainer.train_set.augment_seed = trainer.seed(round, "augment:1")
        return torch.stack([trainer.train_set[i][0] for i in range(trainer.num_examples)])

    a1 = crops("org-a", 1)

    assert torch.equal(crops("org-a", 1), a1)
    assert not torch.equal(crops("org-b", 1), a1)
    assert not torch.equal(crops("org-a", 2), a1)


def test_training_does_not_depend_on_the_dataloader_worker_count(tmp_path):
    assert _delta_bytes(tmp_path, "org-a", 1, workers=2) == _delta_bytes(tmp_path, "org-a", 1)


def test_training_restores_the_global_rng_and_the_deterministic_mode(tmp_path):
    trainer = _trainer(tmp_path, _spec(max_steps=1))
    rng = torch.get_rng_state()
    mode = torch.are_deterministic_algorithms_enabled()

    trainer.train(1)

    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.are_deterministic_algorithms_enabled() == mode


def test_a_round_retrained_with_fp16_loss_scaling_gives_the_same_delta(tmp_path):
    # fp16 autocast on the CPU: the first steps overflow at the initial scale, which the
    # scaler then lowers; a scale carried into the retraining would skip fewer steps.
    trainer = _trainer(tmp_path, _spec(), precision=Precision(torch.float16, scaler=True))
    start = trainer.bm.trainable_state()
    trainer.train(2)
    first = trainer.delta(start)
    trainer.bm.load_trainable_state(start)

    trainer.train(2)

    again = trainer.delta(start)
    assert all(torch.equal(again[name], first[name]) for name in first)


class _AlwaysOne(nn.Module):
    """Logits that rank class 1 first for every image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[0.0, 1.0]]).expand(len(images), 2)


def test_accuracy_is_the_share_of_labels_ranked_first_over_every_batch():
    batches = [
        (torch.zeros(4, 3), torch.tensor([1, 0, 1, 0])),  # 2 of 4
        (torch.zeros(0), torch.zeros(0, dtype=torch.long)),  # every image unreadable
        (torch.zeros(2, 3), torch.tensor([1, 1])),  # 2 of 2
    ]

    assert accuracy(_AlwaysOne(), batches) == pytest.approx(4 / 6)


@pytest.mark.parametrize("labels_on", ["cuda", "cpu"])
def test_hits_are_counted_on_the_device_of_the_logits(labels_on):
    # Fake CUDA tensors: the device logic runs without a GPU.
    with FakeTensorMode():
        logits = torch.empty(8, 5, device="cuda")
        labels = torch.empty(8, dtype=torch.long, device=labels_on)

        counted = hits(logits, labels)

    assert counted.device.type == "cuda" and counted.shape == ()
