"""CoOp prompts: `[SOS] [ctx] [CLASS]. [EOS]` and its options, and the eval-mode cache."""

from __future__ import annotations

from typing import Any

import open_clip
import pytest
import torch

from shared.spec import parse_spec
from shared.tuning import BuiltModel, build
from shared.tuning.text_prompt import PromptedTextHead
from tests.shared.tuning.specs import TINY

CLASSES = ["cat", "sea lion", "dog"]
TOKENIZER = open_clip.get_tokenizer(TINY["open_clip"])


def _build(**options: Any) -> BuiltModel:
    spec = parse_spec(
        {
            "name": "coop",
            "model": {"family": "open_clip", "arch": TINY["open_clip"]},
            "task": {"classes": CLASSES, "prompt_template": "a photo of a {}."},
            "method": {"name": "text_prompt", "options": options},
        }
    )
    return build(spec)


def _head(bm: BuiltModel) -> PromptedTextHead:
    head = bm.model.head
    assert isinstance(head, PromptedTextHead)
    return head


def _decode(ids: torch.Tensor) -> str:
    text: str = TOKENIZER.decode(ids.tolist())
    return text.replace("<start_of_text>", "").split("<end_of_text>")[0].strip()


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        ("end", "x x x x sea lion ."),
        ("middle", "x x sea lion x x ."),
        ("front", "sea lion x x x x ."),
    ],
)
def test_the_class_sits_where_class_position_says(position: str, expected: str) -> None:
    head = _head(_build(n_ctx=4, class_position=position))

    tokens, index = head.tokens[1], head.ctx_index[1]

    assert _decode(tokens) == expected
    assert _decode(tokens[index]) == "x x x x"  # the vectors replace exactly the placeholders


def test_by_default_coop_learns_16_vectors_before_the_class_and_drops_the_template() -> None:
    head = _head(_build())

    assert head.ctx.shape == (16, head.text.width)
    assert _decode(head.tokens[0]) == " ".join(["x"] * 16) + " cat ."


def test_class_specific_contexts_give_each_class_its_own_vectors() -> None:
    bm = _build(n_ctx=3, class_specific=True)

    width = _head(bm).text.width
    assert bm.manifest()["head.ctx"].shape == [len(CLASSES), 3, width]
    assert bm.num_trainable == len(CLASSES) * 3 * width


def test_init_from_a_phrase_starts_the_context_at_its_token_embeddings() -> None:
    head = _head(_build(init="a photo of a"))

    phrase = TOKENIZER(["a photo of a"])[0, 1:5]

    assert head.n_ctx == 4
    assert _decode(head.tokens[2]) == "a photo of a dog ."
    assert torch.equal(head.ctx.detach(), head.text.embed(phrase).detach())


def test_n_ctx_that_disagrees_with_the_init_phrase_is_refused() -> None:
    with pytest.raises(ValueError, match=r"method\.options\.n_ctx: 16 does not match init"):
        _build(n_ctx=16, init="a photo of a")


def _count_encodes(head: PromptedTextHead, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    encode = head.text.encode

    def counted(*args: Any) -> torch.Tensor:
        calls.append(1)
        return encode(*args)

    monkeypatch.setattr(head.text, "encode", counted)
    return calls


def test_eval_mode_computes_the_class_features_once(monkeypatch: pytest.MonkeyPatch) -> None:
    bm = _build(n_ctx=2)
    calls = _count_encodes(_head(bm), monkeypatch)
    images = torch.randn(2, 3, bm.image_size, bm.image_size)
    bm.model.eval()

    with torch.no_grad():
        first = bm.model(images)
        second = bm.model(images)

    assert len(calls) == 1
    assert torch.equal(first, second)


def test_the_cache_is_recomputed_once_training_changes_the_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bm = _build(n_ctx=2)
    head = _head(bm)
    calls = _count_encodes(head, monkeypatch)
    images = torch.randn(2, 3, bm.image_size, bm.image_size)
    bm.model.eval()
    with torch.no_grad():
        before = bm.model(images)
    optimizer = torch.optim.SGD([head.ctx], lr=1.0)
    bm.model.train()
    bm.model(images).sum().backward()
    optimizer.step()
    bm.model.eval()

    with torch.no_grad():
        after = bm.model(images)

    assert len(calls) == 3  # eval, training step, eval after the step
    assert not torch.equal(before, after)
