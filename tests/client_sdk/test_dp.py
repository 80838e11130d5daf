"""Client-side DP-SGD (`local_training.dp`) on the tiny CLIP and the tiny ViT.

One table of (family, method): every round writes a finite delta and reports `dp_epsilon`
equal to Opacus's accountant called directly; the per-example gradients equal autograd's on
each example alone, for every method DP-SGD accepts (not vpt) on both families; the optimiser clips each example's
gradient; a round with seeded noise is reproducible and one with system noise (the default) is
not; DDP is refused in one line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from client_sdk.data import load_local_data
from client_sdk.dp import DPSGD, DPSGDError
from client_sdk.training import LocalTrainer
from shared.blobs import read_state
from shared.privacy import LocalDPSpec
from shared.spec import parse_spec
from shared.tuning import build, train_mode
from tests.accounting import rdp_epsilon
from tests.images import write_image_folder

CLASSES = ["cat", "dog", "fish"]
DP = {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "delta": 1e-5}
ARCH = {"open_clip": "fedtune-tiny-clip", "hf_vit": "fedtune-tiny-vit"}


def _spec(family: str, method: str, dp: dict[str, Any] | None = DP, **training: Any):
    return parse_spec(
        {
            "name": "dp",
            "model": {"family": family, "arch": ARCH[family], "pretrained": None},
            "task": {"classes": CLASSES},
            "method": {"name": method},
            "local_training": {
                "epochs": 1,
                "batch_size": 4,
                "lr": 1e-2,
                "dp": dp,
                **training,
            },
        }
    )


def _trainer(tmp_path: Path, spec, **kw: Any) -> LocalTrainer:
    data = load_local_data(write_image_folder(tmp_path / "data", CLASSES, 5), CLASSES)
    return LocalTrainer(
        spec,
        build(spec),
        data,
        device=torch.device("cpu"),
        val_fraction=0.2,
        organisation="org-a",
        num_workers=0,
        **kw,
    )


@pytest.mark.parametrize(
    ("family", "method"),
    [("open_clip", "bias"), ("open_clip", "lora"), ("hf_vit", "bias"), ("hf_vit", "lora")],
)
def test_a_dp_round_writes_a_delta_and_reports_epsilon_from_opacus(tmp_path, family, method):
    spec = _spec(family, method)
    trainer = _trainer(tmp_path, spec)
    global_state = {k: v.clone() for k, v in trainer.bm.trainable_state().items()}
    dest = tmp_path / "round-3.delta.safetensors"

    result = trainer.run_round(
        3, global_state, federation_id="f", base_version="ab" * 32, dest=dest
    )

    delta = read_state(dest)
    assert set(delta) == set(global_state)
    assert all(bool(torch.isfinite(t).all()) for t in delta.values())
    assert any(bool(t.abs().sum() > 0) for t in delta.values())
    n = trainer.num_examples  # 12 of 15 (val_fraction 0.2)
    steps = math.ceil(n / 4)
    q = 4 / n
    metrics = result.metrics
    assert metrics["dp_epsilon_round"] == pytest.approx(
        rdp_epsilon(1.1, [q] * steps, 1e-5), rel=1e-9
    )
    # rounds 1..3, as if the organisation trained in each
    assert metrics["dp_epsilon"] == pytest.approx(rdp_epsilon(1.1, [q] * 3 * steps, 1e-5), rel=1e-9)
    assert metrics["dp_epsilon"] > metrics["dp_epsilon_round"] > 0


@pytest.mark.parametrize(
    ("family", "method"),
    [
        (family, method)
        for family in ("open_clip", "hf_vit")
        for method in ("bias", "lora", "head", "adapter", "text_prompt", "full")
        if not (family == "hf_vit" and method == "text_prompt")
    ],
)
def test_per_example_gradients_are_each_examples_own(family, method):
    spec = _spec(family, method)
    bm = build(spec)
    model = bm.model.eval()  # no dropout: vmap and autograd see the same function
    dp = DPSGD(model, LocalDPSpec(**DP), batch_size=3, num_examples=30)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 2, 1])

    dp.per_example_grads(images, labels)

    for i in range(3):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(images[i : i + 1]).float(), labels[i : i + 1]
        )
        loss.backward()
        for name, p in dp.trainable.items():
            assert p.grad is not None
            torch.testing.assert_close(p.grad_sample[i], p.grad, rtol=1e-3, atol=1e-5, msg=name)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert all(getattr(p, "grad_sample", None) is None for p in frozen)


def test_every_examples_gradient_is_clipped_before_the_step(tmp_path):
    """SGD, lr 1, one step: the update is (Σ clip(g_i) + noise) / B; with a tiny bound and
    tiny noise its norm is at most the bound, while the plain gradient's is far larger."""
    tiny = {"noise_multiplier": 1e-6, "max_grad_norm": 1e-3, "delta": 1e-5}
    spec = _spec("hf_vit", "bias", tiny, optimizer="sgd", momentum=0.0, lr=1.0, max_steps=1)
    trainer = _trainer(tmp_path, spec)
    before = {k: v.clone() for k, v in trainer.bm.trainable_state().items()}
    trainer.train(1)
    after = trainer.bm.trainable_state()
    step = math.sqrt(sum(float((after[k] - before[k]).double().pow(2).sum()) for k in before))
    assert 0 < step <= 1e-3 * 1.01

    plain = _spec("hf_vit", "bias", None, optimizer="sgd", momentum=0.0, lr=1.0, max_steps=1)
    trainer = _trainer(tmp_path / "plain", plain)
    before = {k: v.clone() for k, v in trainer.bm.trainable_state().items()}
    trainer.train(1)
    after = trainer.bm.trainable_state()
    plain_step = math.sqrt(sum(float((after[k] - before[k]).double().pow(2).sum()) for k in before))
    assert plain_step > 100 * step


def _two_runs(tmp_path: Path, spec) -> list[tuple[dict[str, torch.Tensor], float]]:
    runs = []
    for run in ("a", "b"):
        trainer = _trainer(tmp_path / run, spec)
        state = {k: v.clone() for k, v in trainer.bm.trainable_state().items()}
        dest = tmp_path / run / "round-1.delta.safetensors"
        result = trainer.run_round(1, state, federation_id="f", base_version="ab" * 32, dest=dest)
        runs.append((read_state(dest), result.metrics["dp_epsilon"]))
    return runs


def test_a_dp_round_with_seeded_noise_is_reproducible(tmp_path):
    """The same tensors and ε (the bytes differ only by the timing metrics)."""
    (first, eps_a), (second, eps_b) = _two_runs(
        tmp_path, _spec("open_clip", "bias", {**DP, "noise_source": "seeded"})
    )
    assert eps_a == eps_b
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_system_noise_is_the_default_and_nobody_can_recompute_it_from_the_spec(tmp_path):
    """Two runs of the same spec, organisation, data and round: with the default noise source
    the deltas differ (the noise is under a secret seed), and so does each from the seeded
    run that anyone holding the spec could repeat."""
    spec = _spec("open_clip", "bias")
    assert spec.local_training.dp is not None and spec.local_training.dp.noise_source == "system"
    (first, eps_a), (second, eps_b) = _two_runs(tmp_path / "system", spec)
    ((seeded, _), _) = _two_runs(
        tmp_path / "seeded", _spec("open_clip", "bias", {**DP, "noise_source": "seeded"})
    )

    assert eps_a == eps_b
    assert all(torch.isfinite(t).all() for t in first.values())
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], seeded[k]) for k in first)


def test_dp_with_several_training_processes_is_refused_in_one_line(tmp_path):
    with pytest.raises(DPSGDError) as err:
        _trainer(tmp_path, _spec("hf_vit", "bias"), rank=0, world=2)
    assert "\n" not in str(err.value) and "local_training.dp" in str(err.value)


def test_train_mode_keeps_the_frozen_base_without_gradients():
    spec = _spec("open_clip", "lora")
    bm = build(spec)
    train_mode(bm.model)
    dp = DPSGD(bm.model, LocalDPSpec(**DP), batch_size=2, num_examples=10)
    names = set(dp.trainable)
    assert names == set(bm.trainable_state())
    assert len(names) < sum(1 for _ in bm.model.parameters())
