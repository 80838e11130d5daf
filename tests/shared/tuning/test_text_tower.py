"""CLIP's text tower reaches the state only when a method adopts it, and never trains."""

from __future__ import annotations

import pytest

from shared.tuning import build
from tests.shared.tuning.specs import tiny_spec


def _text_tensors(names: list[str]) -> list[str]:
    return [n for n in names if "token_embedding" in n or "ln_final" in n]


def test_a_method_that_does_not_adopt_the_text_tower_leaves_it_out_of_the_state() -> None:
    bm = build(tiny_spec("open_clip", "bias", train_head=True))

    assert not _text_tensors([*bm.base_state(), *bm.trainable_state()])
    with pytest.raises(ValueError, match="no text tower"):
        bm.model.text_tower()  # released by the builder


def test_text_prompt_puts_the_tower_in_the_frozen_base_and_trains_only_the_context() -> None:
    bm = build(tiny_spec("open_clip", "text_prompt", {"n_ctx": 4}))

    assert _text_tensors(list(bm.base_state()))
    assert bm.trainable_names == ["head.ctx"]


def test_a_vit_has_no_text_tower() -> None:
    bm = build(tiny_spec("hf_vit", "head"))

    with pytest.raises(ValueError, match="hf_vit family has no text tower"):
        bm.model.text_tower()
