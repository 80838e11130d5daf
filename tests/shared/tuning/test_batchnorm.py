"""A CLIP ResNet tower: local training leaves BatchNorm statistics, and so the base, as they were.

Every BatchNorm stays in eval mode under every method (`train_mode`): its
running statistics are buffers of the frozen base, which FedTune never
aggregates, so even `full` trains the affine weights on the pretrained
statistics.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.tuning import BuiltModel, build, train_mode
from tests.shared.tuning.specs import tiny_spec

RESNET = "fedtune-tiny-rn-clip"


def _build(method: str) -> BuiltModel:
    return build(tiny_spec("open_clip", method, arch=RESNET, train_head=method == "bias"))


def _steps(bm: BuiltModel, steps: int = 3) -> None:
    params = [p for p in bm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        train_mode(bm.model)
        images = torch.randn(4, 3, bm.image_size, bm.image_size, generator=generator)
        labels = torch.randint(0, 10, (4,), generator=generator)
        loss = nn.functional.cross_entropy(bm.model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("method", ["bias", "head", "full"])
def test_local_steps_leave_the_base_fingerprint_of_a_resnet_tower_unchanged(method: str) -> None:
    bm = _build(method)
    before = bm.base_fingerprint()
    trainable_before = bm.trainable_state()

    _steps(bm)

    assert bm.base_fingerprint() == before
    changed = [
        n for n, t in bm.trainable_state().items() if not torch.equal(t, trainable_before[n])
    ]
    assert changed  # the method did train


def test_train_mode_keeps_batchnorm_and_frozen_modules_in_eval_mode() -> None:
    bm = _build("bias")

    train_mode(bm.model)

    modes = {name: m.training for name, m in bm.model.named_modules()}
    batchnorms = [n for n, m in bm.model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and not any(modes[n] for n in batchnorms)
    assert modes["visual.attnpool.c_proj"]  # its bias trains
    assert modes["visual"]  # a container with no state of its own follows training mode


def test_a_plain_train_call_would_have_drifted_the_statistics() -> None:
    bm = _build("bias")
    before = bm.base_fingerprint()

    bm.model.train()
    bm.model(torch.randn(4, 3, bm.image_size, bm.image_size))

    assert bm.base_fingerprint() != before
