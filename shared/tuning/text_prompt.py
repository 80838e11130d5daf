"""`text_prompt`: CoOp context optimisation (Zhou et al., 2022) for CLIP's text encoder.

`n_ctx` learnable context vectors, shared by all classes, are placed before
each class prompt: `[SOS] v_1 ... v_n <prompt_template.format(class)> [EOS]`.
The frozen text tower turns them into the class embeddings on every forward,
so the classifier head is produced by the prompts (and `train_head` does not
apply). The vectors start from a seeded normal (std 0.02), CoOp's generic
initialisation. open_clip only; the text tower becomes part of the base.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from shared.models.base import VisionClassifier
from shared.models.open_clip_family import TextTower
from shared.tuning.registry import Options, TuningMethod, register_method

_PLACEHOLDER = "X"


class TextPromptOptions(Options):
    n_ctx: int = Field(default=16, ge=1, le=64, description="Learnable context vectors.")


class PromptedTextHead(nn.Module):
    """Class embeddings [classes, dim] from learned context + class prompts."""

    def __init__(self, text: TextTower, tokens: torch.Tensor, n_ctx: int) -> None:
        super().__init__()
        self.text = text
        self.register_buffer("tokens", tokens, persistent=False)  # derived from the spec
        self.n_ctx = n_ctx
        width = text.token_embedding.weight.shape[1]
        self.ctx = nn.Parameter(torch.empty(n_ctx, width))
        nn.init.normal_(self.ctx, std=0.02)

    tokens: torch.Tensor

    def forward(self) -> torch.Tensor:
        tokens = self.tokens
        embedded = self.text.token_embedding(tokens)
        ctx = self.ctx.to(embedded.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        x = torch.cat([embedded[:, :1], ctx, embedded[:, 1 + self.n_ctx :]], dim=1)
        return F.normalize(self.text.encode(x, tokens), dim=-1)


@register_method
class TextPrompt(TuningMethod):
    name = "text_prompt"
    options_model = TextPromptOptions
    families = frozenset({"open_clip"})
    accepts_train_head = False

    def apply(self, model: VisionClassifier, options: TextPromptOptions) -> list[str]:
        if model.text_source is None:
            raise ValueError("text_prompt needs the CLIP text tower")
        clip, tokenizer = model.text_source
        text = TextTower(clip)
        prompts = self._prompts(model, options.n_ctx)
        tokens = tokenizer(prompts).to(text.positional_embedding.device)
        self._check_fits(tokens, options.n_ctx, text.context_length)
        model.head = PromptedTextHead(text, tokens, options.n_ctx)
        return ["head.ctx"]

    @staticmethod
    def _prompts(model: Any, n_ctx: int) -> list[str]:
        template, classes = model.prompt_template, model.class_names
        context = " ".join([_PLACEHOLDER] * n_ctx)
        return [f"{context} {template.format(c)}" for c in classes]

    @staticmethod
    def _check_fits(tokens: torch.Tensor, n_ctx: int, context_length: int) -> None:
        if tokens.device.type == "meta":
            return
        lengths = (tokens != 0).sum(dim=1)
        if int(lengths.max()) >= context_length:
            raise ValueError(
                f"method.options.n_ctx: {n_ctx} context vectors plus the longest class prompt "
                f"do not fit the text encoder's {context_length} tokens"
            )
