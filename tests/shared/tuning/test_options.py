"""Bad method options and bad states are refused with the offending name."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from shared.tuning import build
from tests.shared.tuning.specs import tiny_spec

BAD_OPTIONS: list[tuple[str, str, dict[str, Any], str]] = [
    ("hf_vit", "lora", {"rank": 8}, r"method\.options\.rank: Extra inputs"),
    ("hf_vit", "lora", {"r": 0}, r"method\.options\.r: "),
    ("hf_vit", "lora", {"targets": ["ffn"]}, r"method\.options\.targets\.0: "),
    ("hf_vit", "lora", {"targets": []}, r"method\.options\.targets: "),
    ("open_clip", "lora", {"targets": ["attn", "attn"]}, r"method\.options\.targets: .*repeat"),
    ("hf_vit", "adapter", {"dim": -1}, r"method\.options\.dim: "),
    ("hf_vit", "adapter", {"scale": "big"}, r"method\.options\.scale: "),
    ("open_clip", "vpt", {"tokens": 0}, r"method\.options\.tokens: "),
    ("open_clip", "vpt", {"deep": "maybe"}, r"method\.options\.deep: "),
    ("open_clip", "text_prompt", {"n_ctx": 0}, r"method\.options\.n_ctx: "),
    ("open_clip", "text_prompt", {"n_ctx": 40}, r"method\.options\.n_ctx: 40 .* 32 tokens"),
    ("open_clip", "bias", {"lr": 1}, r"method\.options\.lr: Extra inputs"),
    ("hf_vit", "full", {"anything": True}, r"method\.options\.anything: "),
]


@pytest.mark.parametrize(("family", "method", "options", "message"), BAD_OPTIONS)
def test_invalid_method_option_is_named(
    family: str, method: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build(tiny_spec(family, method, options))


def test_train_head_with_text_prompt_is_refused() -> None:
    with pytest.raises(ValueError, match=r"method\.train_head"):
        build(tiny_spec("open_clip", "text_prompt", train_head=True))


@pytest.mark.parametrize(
    ("family", "arch"), [("open_clip", "no-such-clip"), ("hf_vit", "no-such-vit")]
)
def test_unknown_arch_is_named_in_one_line(family: str, arch: str) -> None:
    with pytest.raises(ValueError, match=rf"model\.arch: .*{arch}") as caught:
        build(tiny_spec(family, "bias", arch=arch))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("head.weight"), "missing tensor 'head.weight'"),
        (lambda s: s.update({"extra": torch.zeros(1)}), "unexpected tensor 'extra'"),
        (lambda s: s.update({"head.weight": torch.zeros(3, 3)}), "'head.weight' has shape"),
    ],
)
def test_load_trainable_state_is_strict(change: Any, message: str) -> None:
    bm = build(tiny_spec("open_clip", "head"))
    before = bm.trainable_state()
    state = bm.trainable_state()
    change(state)
    with pytest.raises(ValueError, match=message):
        bm.load_trainable_state(state)
    assert all(torch.equal(before[n], t) for n, t in bm.trainable_state().items())


def test_base_state_that_does_not_fit_is_refused() -> None:
    donor = build(tiny_spec("open_clip", "bias"))
    with pytest.raises(ValueError, match="base state does not fit"):
        build(tiny_spec("open_clip", "head"), base_state=donor.base_state())


def test_load_trainable_state_casts_dtype() -> None:
    bm = build(tiny_spec("hf_vit", "head"))
    half = {n: (t + 1).to(torch.float16) for n, t in bm.trainable_state().items()}
    bm.load_trainable_state(half)
    loaded = bm.trainable_state()
    assert all(t.dtype == torch.float32 for t in loaded.values())
    assert all(torch.equal(loaded[n], half[n].float()) for n in half)
