"""Which trainable tensors weight decay spares, for every method on the tiny models."""

from __future__ import annotations

import re

import pytest
from torch import nn

from shared.tuning import build
from shared.tuning.groups import decay_exempt, param_groups
from tests.shared.tuning.specs import tiny_spec

CLIP_BLOCK = "visual.transformer.resblocks.N"
VIT_BLOCK = "vit.layers.N"

# (family, method, options, the trainable tensors that decay; block indices read N)
CASES = [
    ("open_clip", "bias", {}, set()),
    ("open_clip", "head", {}, set()),
    ("open_clip", "text_prompt", {}, set()),
    ("open_clip", "vpt", {}, set()),
    ("hf_vit", "vpt", {"deep": True}, {"classifier.weight"}),
    (
        "open_clip",
        "lora",
        {},
        {f"{CLIP_BLOCK}.attn.lora_{q}.lora_{m}.weight" for q in "qv" for m in "AB"},
    ),
    (
        "hf_vit",
        "lora",
        {},
        {f"{VIT_BLOCK}.attention.{q}_proj.lora_{m}.default.weight" for q in "qv" for m in "AB"}
        | {"classifier.weight"},
    ),
    (
        "open_clip",
        "adapter",
        {},
        {f"{CLIP_BLOCK}.adapter.down.weight", f"{CLIP_BLOCK}.adapter.up.weight"},
    ),
    (
        "open_clip",
        "full",
        {},
        {"visual.conv1.weight", "visual.proj"}
        | {
            f"{CLIP_BLOCK}.{n}"
            for n in (
                "attn.in_proj_weight",
                "attn.out_proj.weight",
                "mlp.c_fc.weight",
                "mlp.c_proj.weight",
            )
        },
    ),
    (
        "hf_vit",
        "full",
        {},
        {"vit.embeddings.patch_embeddings.projection.weight", "classifier.weight"}
        | {f"{VIT_BLOCK}.attention.{p}_proj.weight" for p in "qkvo"}
        | {f"{VIT_BLOCK}.mlp.fc1.weight", f"{VIT_BLOCK}.mlp.fc2.weight"},
    ),
]


def _generic(name: str) -> str:
    return re.sub(r"\.\d+\.", ".N.", name)


def _named_groups(model: nn.Module, groups: list[dict]) -> dict[str, set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}


@pytest.mark.parametrize(
    ("family", "method", "options", "decayed"),
    CASES,
    ids=[f"{c[0]}-{c[1]}" for c in CASES],
)
def test_only_weight_matrices_decay(family, method, options, decayed):
    bm = build(tiny_spec(family, method, options))

    groups = param_groups(bm.model, 0.1)

    named = _named_groups(bm.model, groups)
    assert {_generic(n) for n in named.get("decay", set())} == decayed
    assert named.get("decay", set()) | named.get("no_decay", set()) == set(bm.trainable_names)
    assert {g["name"]: g["weight_decay"] for g in groups} == {
        **({"decay": 0.1} if decayed else {}),
        **({"no_decay": 0.0} if set(bm.trainable_names) - named.get("decay", set()) else {}),
    }


@pytest.mark.parametrize(
    ("family", "method", "options", "expected"),
    [
        ("open_clip", "vpt", {}, {"visual.vpt_prompts": "prompt"}),
        ("open_clip", "text_prompt", {}, {"head.ctx": "prompt"}),
        ("open_clip", "head", {}, {"head.weight": "zero-shot head"}),
        (
            "open_clip",
            "full",
            {},
            {
                "visual.class_embedding": "embedding",
                "visual.positional_embedding": "embedding",
                "visual.ln_pre.weight": "norm",
                "visual.ln_pre.bias": "bias",
                "visual.transformer.resblocks.0.attn.in_proj_bias": "bias",
            },
        ),
        (
            "hf_vit",
            "full",
            {},
            {
                "vit.embeddings.cls_token": "embedding",
                "vit.embeddings.position_embeddings": "embedding",
                "vit.layers.0.layernorm_before.weight": "norm",
                "classifier.bias": "bias",
            },
        ),
    ],
    ids=["vpt-prompts", "coop-context", "zero-shot-head", "clip-full", "vit-full"],
)
def test_exemptions_name_their_reason(family, method, options, expected):
    bm = build(tiny_spec(family, method, options))

    exempt = decay_exempt(bm.model)

    assert {n: exempt.get(n) for n in expected} == expected


def test_norms_are_found_by_module_type_not_name():
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, 4, 3, bias=False))
    model.add_module("bn", nn.BatchNorm2d(4))
    model.add_module("gn", nn.GroupNorm(2, 4))
    model.add_module("norm", nn.Linear(4, 4, bias=False))  # named like a norm, is not one

    exempt = decay_exempt(model)

    assert exempt == {
        "bn.weight": "norm",
        "bn.bias": "bias",
        "gn.weight": "norm",
        "gn.bias": "bias",
    }


def test_policy_none_decays_every_trainable_tensor():
    bm = build(tiny_spec("open_clip", "bias"))

    groups = param_groups(bm.model, 0.1, "none")

    named = _named_groups(bm.model, groups)
    assert named == {"decay": set(bm.trainable_names)}
    assert groups[0]["weight_decay"] == 0.1
