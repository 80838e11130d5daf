"""Adapter styles on the tiny CLIP and ViT: parameter counts by formula, identity at init."""

from __future__ import annotations

from typing import cast

import pytest
import torch

from shared.tuning import build
from shared.tuning.adapter import Bottleneck
from tests.shared.tuning.specs import tiny_spec

FAMILIES = ("open_clip", "hf_vit")
# style -> (adapters per block, default width for a model of width w)
STYLES = {
    "parallel": (1, lambda w: 8),
    "houlsby": (2, lambda w: 64),
    "pfeiffer": (1, lambda w: w // 16),
}


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _bottleneck_params(width: int, dim: int) -> int:
    return 2 * width * dim + dim + width


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("style", STYLES)
def test_each_style_trains_its_formula_of_parameters_at_its_default_width(
    family: str, style: str
) -> None:
    bm = build(tiny_spec(family, "adapter", {"style": style}))

    per_block, default_dim = STYLES[style]
    width, blocks = bm.model.width, len(bm.model.blocks())
    expected = blocks * per_block * _bottleneck_params(width, default_dim(width))
    params = dict(bm.model.named_parameters())
    assert sum(params[n].numel() for n in bm.method_params) == expected


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("style", STYLES)
def test_each_style_leaves_the_output_unchanged_before_training(family: str, style: str) -> None:
    plain = build(tiny_spec(family, "bias"))
    adapted = build(tiny_spec(family, "adapter", {"style": style, "dim": 4}))
    x = _images()

    with torch.no_grad():
        assert torch.equal(adapted.model(x), plain.model(x))
        # the adapters are wired in: a non-zero up-projection moves the output (not a constant
        # one: it adds the same value to every channel, which the next LayerNorm removes)
        for name, param in adapted.model.named_parameters():
            if name.endswith(".up.weight"):
                param.copy_(torch.linspace(-0.05, 0.05, param.numel()).reshape(param.shape))
        assert not torch.allclose(adapted.model(x), plain.model(x))


def test_houlsby_puts_an_adapter_after_attention_and_after_the_mlp() -> None:
    bm = build(tiny_spec("hf_vit", "adapter", {"style": "houlsby", "dim": 4}))

    modules = {n.split(".")[-3] for n in bm.method_params}
    assert modules == {"adapter", "adapter_attn"}


def test_explicit_width_scale_and_dropout_override_the_style_defaults() -> None:
    bm = build(
        tiny_spec(
            "open_clip", "adapter", {"style": "pfeiffer", "dim": 3, "scale": 0.5, "dropout": 0.1}
        )
    )

    adapter = cast(Bottleneck, bm.model.blocks()[0].get_submodule("adapter"))
    assert (adapter.down.out_features, adapter.scale) == (3, 0.5)
    assert cast(torch.nn.Dropout, adapter.dropout).p == 0.1


def test_default_parallel_adapter_keeps_its_width_8_and_scale_0_1() -> None:
    bm = build(tiny_spec("open_clip", "adapter"))

    adapter = cast(Bottleneck, bm.model.blocks()[0].get_submodule("adapter"))
    assert (adapter.down.out_features, adapter.scale) == (8, 0.1)
    assert isinstance(adapter.dropout, torch.nn.Identity)
