"""VPT's first prompts enter where the token sequence does: before CLIP's `ln_pre`."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shared.tuning import BuiltModel, build
from tests.shared.tuning.specs import tiny_spec

TOKENS = 3


def _record_input(module: nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []

    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(args[0].detach())

    module.register_forward_pre_hook(hook)  # after VPT's own hooks: sees what they give
    return seen


def _prompts(bm: BuiltModel) -> torch.Tensor:
    return bm.model.get_parameter(f"{bm.model.backbone_name}.vpt_prompts")


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("deep", [False, True])
def test_clip_prompts_pass_through_ln_pre(deep: bool) -> None:
    bm = build(tiny_spec("open_clip", "vpt", {"tokens": TOKENS, "deep": deep}))
    ln_pre = cast(nn.LayerNorm, bm.model.get_submodule("visual.ln_pre"))
    seen = _record_input(ln_pre)

    with torch.no_grad():
        bm.model(_images())

    (x,) = seen
    prompts = _prompts(bm)[0]
    assert torch.equal(x[0, 1 : 1 + TOKENS], prompts)
    assert x.shape[1] == 1 + TOKENS + (32 // 8) ** 2


def test_clip_first_block_sees_the_normalised_prompts() -> None:
    bm = build(tiny_spec("open_clip", "vpt", {"tokens": TOKENS, "deep": True}))
    ln_pre = cast(nn.LayerNorm, bm.model.get_submodule("visual.ln_pre"))
    seen = _record_input(bm.model.blocks()[0])

    with torch.no_grad():
        bm.model(_images())
        expected = F.layer_norm(
            _prompts(bm)[0], ln_pre.normalized_shape, ln_pre.weight, ln_pre.bias
        )

    assert torch.allclose(seen[0][0, 1 : 1 + TOKENS], expected, atol=1e-6)


def test_vit_prompts_enter_at_the_first_block() -> None:
    bm = build(tiny_spec("hf_vit", "vpt", {"tokens": TOKENS, "deep": True}))
    seen = _record_input(bm.model.blocks()[0])

    with torch.no_grad():
        bm.model(_images())

    assert torch.equal(seen[0][0, 1 : 1 + TOKENS], _prompts(bm)[0])


@pytest.mark.parametrize("family", ["open_clip", "hf_vit"])
def test_deep_prompts_replace_the_previous_ones_at_later_blocks(family: str) -> None:
    bm = build(tiny_spec(family, "vpt", {"tokens": TOKENS, "deep": True}))
    seen = _record_input(bm.model.blocks()[1])

    with torch.no_grad():
        bm.model(_images())

    x = seen[0]
    assert x.shape[1] == 1 + TOKENS + (32 // 8) ** 2
    assert torch.equal(x[0, 1 : 1 + TOKENS], _prompts(bm)[1].to(x.dtype))
