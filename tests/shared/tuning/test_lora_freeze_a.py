"""`lora.freeze_a`: B trains, A is frozen at its seeded init and belongs to the base."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shared.tuning import build
from tests.shared.tuning.specs import tiny_spec

FAMILIES = ("open_clip", "hf_vit")


def _lora_a(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t for n, t in state.items() if ".lora_A" in n}


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_a_trains_b_only_half_the_lora_parameters(family: str) -> None:
    plain = build(tiny_spec(family, "lora", {"r": 4}))
    frozen = build(tiny_spec(family, "lora", {"r": 4, "freeze_a": True}))

    assert frozen.method_params == [n for n in plain.method_params if ".lora_B" in n]
    params = dict(plain.model.named_parameters())
    assert 2 * sum(params[n].numel() for n in frozen.method_params) == sum(
        params[n].numel() for n in plain.method_params
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_a_is_in_the_base_and_its_fingerprint(family: str) -> None:
    bm = build(tiny_spec(family, "lora", {"r": 4, "freeze_a": True}))
    before = bm.base_fingerprint()

    a_names = _lora_a(bm.base_state())
    assert a_names and not _lora_a(bm.trainable_state())
    with torch.no_grad():
        bm.model.get_parameter(next(iter(a_names))).add_(1e-3)
    assert bm.base_fingerprint() != before


def test_frozen_a_comes_from_the_spec_seed() -> None:
    first = _lora_a(build(tiny_spec("open_clip", "lora", {"freeze_a": True})).base_state())
    again = _lora_a(build(tiny_spec("open_clip", "lora", {"freeze_a": True})).base_state())
    other = _lora_a(build(tiny_spec("open_clip", "lora", {"freeze_a": True}, seed=1)).base_state())

    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_training_step_leaves_a_frozen_a_unchanged(family: str) -> None:
    bm = build(tiny_spec(family, "lora", {"r": 4, "freeze_a": True}))
    a_before = {n: t.clone() for n, t in _lora_a(bm.base_state()).items()}
    b_before = bm.trainable_state()
    params = [p for p in bm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    bm.model.train()
    F.cross_entropy(bm.model(x), torch.arange(4)).backward()
    optimizer.step()

    assert all(torch.equal(bm.base_state()[n], t) for n, t in a_before.items())
    after = bm.trainable_state()
    assert any(not torch.equal(after[n], b_before[n]) for n in after if ".lora_B" in n)


def test_default_still_trains_a_and_b() -> None:
    bm = build(tiny_spec("open_clip", "lora"))

    assert {n.rsplit(".", 2)[-2] for n in bm.method_params} == {"lora_A", "lora_B"}
