"""`text_prompt`: CoOp context optimisation (Zhou et al., IJCV 2022) for CLIP's text encoder.

Learnable context vectors take the place of prompt words, as CoOp learns
them: `[SOS] v_1 ... v_n [CLASS]. [EOS]` by default (`class_position: end`),
`[SOS] v_1 .. v_n/2 [CLASS] ... v_n. [EOS]` (middle) or
`[SOS] [CLASS] v_1 ... v_n. [EOS]` (front). The task's `prompt_template` plays
no part: the context replaces it. One context is shared by all classes, or each
class has its own (`class_specific`, CoOp's CSC). The vectors start from a
seeded normal (std 0.02), or from the token embeddings of a phrase (`init`,
e.g. "a photo of a"; `n_ctx` is then its token count).

The frozen text tower turns the prompts into class embeddings while training;
in eval mode they are computed once and cached until the context (or the
tower) changes. The classifier head is produced by the prompts, so
`train_head` does not apply. open_clip only (see `shared.methods`); the text
tower becomes part of the base.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from shared.methods import TextPromptOptions
from shared.models.base import TextTower, VisionClassifier
from shared.tuning.registry import TuningMethod, register_method

DEFAULT_N_CTX = 16  # CoOp's default without an initialising phrase
_PLACEHOLDER = "X"  # stands for one context vector in the tokenised prompt


class PromptedTextHead(nn.Module):
    """Class embeddings [classes, dim] from learned context placed among the class tokens.

    `tokens` [C, L] are the tokenised prompts; `ctx_index` [C, n_ctx] the token
    positions whose embeddings the context vectors replace, in order.
    """

    def __init__(
        self, text: TextTower, tokens: torch.Tensor, ctx_index: torch.Tensor, ctx: torch.Tensor
    ) -> None:
        super().__init__()
        self.text = text
        # derived from the spec, so not part of the state
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("ctx_index", ctx_index, persistent=False)
        self.ctx = nn.Parameter(ctx)  # [n_ctx, width], or [C, n_ctx, width] class-specific
        self._cache: tuple[tuple[object, ...], torch.Tensor] | None = None

    tokens: torch.Tensor
    ctx_index: torch.Tensor
    text: TextTower

    @property
    def n_ctx(self) -> int:
        return int(self.ctx_index.shape[1])

    def forward(self) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return self._encode()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._encode())
        return self._cache[1]

    def _encode(self) -> torch.Tensor:
        tokens = self.tokens
        embedded = self.text.embed(tokens)
        ctx = self.ctx.to(embedded.dtype)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        rows = torch.arange(tokens.shape[0], device=tokens.device).unsqueeze(1)
        x = embedded.index_put((rows, self.ctx_index), ctx)
        return F.normalize(self.text.encode(x, tokens), dim=-1)

    def _cache_key(self) -> tuple[object, ...]:
        """What the eval-mode features depend on: every in-place change bumps a version."""
        device = self.ctx.device.type
        amp = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        tower = tuple(p._version for p in self.text.parameters())
        return (self.ctx._version, self.ctx.data_ptr(), self.ctx.device, amp, tower)


@register_method
class TextPrompt(TuningMethod):
    name = "text_prompt"

    def apply(self, model: VisionClassifier, options: TextPromptOptions) -> list[str]:
        text = model.text_tower()
        n_ctx, init = _context_size(text, options)
        names = list(model.class_names)
        name_lens = [len(ids) for ids in _word_ids(text, names)]
        prompts = [_prompt(options, n_ctx, name) for name in names]
        tokens = text.tokenize(prompts)
        _check_fits(_word_ids(text, prompts), n_ctx, text.context_length)
        index = torch.tensor(
            [_ctx_positions(options.class_position, n_ctx, n) for n in name_lens],
            dtype=torch.long,
            device=tokens.device,
        )
        shape = (len(names), n_ctx, text.width) if options.class_specific else (n_ctx, text.width)
        ctx = torch.empty(shape)
        if init is None:
            nn.init.normal_(ctx, std=0.02)
        else:
            with torch.no_grad():
                ctx.copy_(text.embed(init.to(tokens.device)).expand(shape))
        setattr(model, model.head_name, PromptedTextHead(text, tokens, index, ctx))
        return [f"{model.head_name}.ctx"]

    @torch.no_grad()
    def plain_state(self, model: VisionClassifier) -> dict[str, torch.Tensor]:
        """The prompts' class embeddings as the plain head's weight (the zero-shot head's form)."""
        prefix = model.head_name + "."
        head = model.get_submodule(model.head_name)
        was_training = head.training
        head.train(False)
        try:
            weight = head().detach().clone()
        finally:
            head.train(was_training)
        state = {n: t.detach() for n, t in model.state_dict().items() if not n.startswith(prefix)}
        return {**state, f"{prefix}weight": weight}


def _context_size(text: TextTower, options: TextPromptOptions) -> tuple[int, torch.Tensor | None]:
    """The number of context vectors and, with `init`, the phrase's token ids [n_ctx]."""
    if options.init is None:
        return options.n_ctx or DEFAULT_N_CTX, None
    (ids,) = _word_ids(text, [options.init])
    if options.n_ctx is not None and options.n_ctx != len(ids):
        raise ValueError(
            f"method.options.n_ctx: {options.n_ctx} does not match init {options.init!r}, "
            f"which is {len(ids)} tokens; drop n_ctx"
        )
    return len(ids), ids


def _prompt(options: TextPromptOptions, n_ctx: int, name: str) -> str:
    """The prompt text; context words (placeholders or the init phrase) where the vectors go."""
    words = options.init.split() if options.init is not None else [_PLACEHOLDER] * n_ctx
    if options.class_position == "front":
        return f"{name} {' '.join(words)}."
    if options.class_position == "middle" and options.init is None:
        half = n_ctx // 2
        return f"{' '.join(words[:half])} {name} {' '.join(words[half:])}."
    if options.class_position == "middle":
        raise ValueError(
            "method.options.class_position: middle splits placeholder context; "
            "it does not combine with init"
        )
    return f"{' '.join(words)} {name}."


def _ctx_positions(position: str, n_ctx: int, name_len: int) -> list[int]:
    """Token positions of the context vectors, after [SOS] at 0."""
    if position == "front":
        return list(range(1 + name_len, 1 + name_len + n_ctx))
    if position == "middle":
        half = n_ctx // 2
        return [*range(1, 1 + half), *range(1 + half + name_len, 1 + n_ctx + name_len)]
    return list(range(1, 1 + n_ctx))


def _word_ids(text: TextTower, texts: Sequence[str]) -> list[torch.Tensor]:
    """Token ids of each text without [SOS], [EOS] and padding, on the CPU.

    Counted with the tower's own tokenizer on the CPU, so that a model built on
    the `meta` device (for counting) still knows how long each text is.
    """
    tokenizer = getattr(text, "tokenizer", None)
    with torch.device("cpu"):
        ids = tokenizer(list(texts)) if tokenizer is not None else text.tokenize(texts).cpu()
    return [row[1 : int((row != 0).sum()) - 1] for row in ids]


def _check_fits(prompts: list[torch.Tensor], n_ctx: int, context_length: int) -> None:
    longest = max((len(ids) for ids in prompts), default=0)
    if longest + 2 >= context_length:  # a full row may have been truncated
        raise ValueError(
            f"method.options.n_ctx: {n_ctx} context vectors plus the longest class prompt "
            f"do not fit the text encoder's {context_length} tokens"
        )
