"""Every (family x method) on the tiny configs through the same assertions.

One table, as in PEFT's test_custom_models.py: what trains, what a step
changes, that the loss falls, and that the trainable state and base are
reproducible and round-trip through safetensors bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load

from shared.blobs import encode_state
from shared.methods import method_names
from shared.tuning import BuiltModel, build, fingerprint
from tests.shared.tuning.specs import tiny_spec

Check = Callable[[BuiltModel, str], bool]


def _in_backbone(bm: BuiltModel, name: str) -> bool:
    return name.startswith(bm.model.backbone_name + ".")


# name -> does this parameter belong to what the method trains (head excluded)
METHOD_PARAMS: dict[str, Check] = {
    "full": lambda bm, n: True,
    "head": lambda bm, n: n in bm.model.head_param_names(),
    "bias": lambda bm, n: _in_backbone(bm, n) and n.endswith("bias"),
    "lora": lambda bm, n: ".lora_" in n,
    "adapter": lambda bm, n: ".adapter." in n,
    "vpt": lambda bm, n: n.endswith(".vpt_prompts"),
    "text_prompt": lambda bm, n: n == "head.ctx",
}

CASES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("open_clip", "full", {}, False),
    ("open_clip", "head", {}, False),
    ("open_clip", "bias", {}, False),
    ("open_clip", "bias", {}, True),
    ("open_clip", "lora", {"r": 4, "alpha": 8}, False),
    ("open_clip", "lora", {"r": 2, "targets": ["attn", "mlp"], "dropout": 0.1}, True),
    ("open_clip", "adapter", {"dim": 4}, False),
    ("open_clip", "vpt", {"tokens": 3, "deep": True}, False),
    ("open_clip", "vpt", {"tokens": 2, "deep": False}, True),
    ("open_clip", "text_prompt", {"n_ctx": 4}, False),
    ("hf_vit", "full", {}, False),
    ("hf_vit", "head", {}, False),
    ("hf_vit", "bias", {}, False),
    ("hf_vit", "lora", {"r": 4, "alpha": 8}, False),
    ("hf_vit", "lora", {"r": 2, "targets": ["attn", "mlp"]}, False),
    ("hf_vit", "adapter", {"dim": 4, "scale": 0.5}, False),
    ("hf_vit", "vpt", {"tokens": 3, "deep": True}, False),
    ("hf_vit", "vpt", {"tokens": 2, "deep": False}, False),
]
IDS = [
    f"{f}-{m}-{'-'.join(f'{k}={v}' for k, v in o.items())}{'-head' if h else ''}"
    for f, m, o, h in CASES
]


@pytest.fixture(params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> tuple[str, str, dict[str, Any], bool]:
    return request.param


def _build(case: tuple[str, str, dict[str, Any], bool], seed: int = 0) -> BuiltModel:
    family, method, options, train_head = case
    return build(tiny_spec(family, method, options, train_head=train_head, seed=seed))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(8, 3, 32, 32, generator=g), torch.arange(8) % 10


def test_table_covers_every_registered_method() -> None:
    covered = {(f, m) for f, m, _, _ in CASES}
    for family in ("open_clip", "hf_vit"):
        assert {m for f, m in covered if f == family} == set(method_names(family))


def test_exactly_the_intended_parameters_require_grad(case: Any) -> None:
    family, method, _, train_head = case
    bm = _build(case)
    head = set(bm.model.head_param_names())
    with_head = train_head or family == "hf_vit"
    expected = {
        n
        for n, _ in bm.model.named_parameters()
        if METHOD_PARAMS[method](bm, n) or (with_head and n in head)
    }
    trainable = {n for n, p in bm.model.named_parameters() if p.requires_grad}
    assert trainable == expected
    assert set(bm.method_params) and set(bm.method_params) <= trainable
    assert bm.trainable_names == sorted(trainable)
    assert bm.num_trainable == sum(p.numel() for p in bm.trainable_state().values())


def test_one_step_changes_only_trainable_tensors(case: Any) -> None:
    bm = _build(case)
    base_before = {n: t.clone() for n, t in bm.base_state().items()}
    trainable_before = bm.trainable_state()
    params = [p for p in bm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    x, y = _batch()
    bm.model.train()
    F.cross_entropy(bm.model(x), y).backward()
    optimizer.step()

    base_after = bm.base_state()
    for name, before in base_before.items():
        assert torch.equal(base_after[name], before), name
    after = bm.trainable_state()
    assert any(not torch.equal(after[n], trainable_before[n]) for n in after)


def test_loss_falls_over_a_few_steps(case: Any) -> None:
    bm = _build(case)
    params = [p for p in bm.model.parameters() if p.requires_grad]
    lr = 1e-3 if case[1] == "full" else 2e-2
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    x, y = _batch()
    bm.model.train()
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = F.cross_entropy(bm.model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_trainable_state_round_trips_through_safetensors(case: Any) -> None:
    bm = _build(case)
    with torch.no_grad():
        for p in bm.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    state = bm.trainable_state()

    fresh = _build(case)
    fresh.load_trainable_state(load(encode_state(state)))
    reloaded = fresh.trainable_state()
    assert list(reloaded) == list(state)
    assert all(torch.equal(reloaded[n], state[n]) for n in state)


def test_two_builds_give_identical_state_and_fingerprint(case: Any) -> None:
    a, b = _build(case), _build(case)
    sa, sb = a.trainable_state(), b.trainable_state()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert a.base_fingerprint() == b.base_fingerprint()
    assert a.manifest() == b.manifest()


def test_another_seed_gives_another_model(case: Any) -> None:
    def everything(bm: BuiltModel) -> str:
        return fingerprint({**bm.base_state(), **bm.trainable_state()})

    assert everything(_build(case, seed=0)) != everything(_build(case, seed=1))


def test_build_from_base_state_reproduces_fingerprint_and_outputs(case: Any) -> None:
    family, method, options, train_head = case
    bm = _build(case)
    spec = tiny_spec(family, method, options, train_head=train_head)
    rebuilt = build(spec, base_state=bm.base_state())
    rebuilt.load_trainable_state(bm.trainable_state())
    assert rebuilt.base_fingerprint() == bm.base_fingerprint()
    x, _ = _batch()
    with torch.no_grad():
        assert torch.equal(rebuilt.model(x), bm.model(x))
