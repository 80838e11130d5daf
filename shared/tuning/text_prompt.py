"""`text_prompt`: CoOp context optimisation (Zhou et al., 2022) for CLIP's text encoder.

`n_ctx` learnable context vectors, shared by all classes, are placed before
each class prompt: `[SOS] v_1 ... v_n <prompt_template.format(class)> [EOS]`.
The frozen text tower turns them into the class embeddings on every forward,
so the classifier head is produced by the prompts (and `train_head` does not
apply). The vectors start from a seeded normal (std 0.02), CoOp's generic
initialisation. open_clip only (see `shared.methods`); the text tower becomes
part of the base.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.methods import TextPromptOptions
from shared.models.base import TextTower, VisionClassifier
from shared.tuning.registry import TuningMethod, register_method

_PLACEHOLDER = "X"


class PromptedTextHead(nn.Module):
    """Class embeddings [classes, dim] from learned context + class prompts."""

    def __init__(self, text: TextTower, tokens: torch.Tensor, n_ctx: int) -> None:
        super().__init__()
        self.text = text
        self.register_buffer("tokens", tokens, persistent=False)  # derived from the spec
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(torch.empty(n_ctx, text.width))
        nn.init.normal_(self.ctx, std=0.02)

    tokens: torch.Tensor
    text: TextTower

    def forward(self) -> torch.Tensor:
        tokens = self.tokens
        embedded = self.text.embed(tokens)
        ctx = self.ctx.to(embedded.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        x = torch.cat([embedded[:, :1], ctx, embedded[:, 1 + self.n_ctx :]], dim=1)
        return F.normalize(self.text.encode(x, tokens), dim=-1)


@register_method
class TextPrompt(TuningMethod):
    name = "text_prompt"

    def apply(self, model: VisionClassifier, options: TextPromptOptions) -> list[str]:
        text = model.text_tower()
        tokens = text.tokenize(self._prompts(model, options.n_ctx))
        self._check_fits(tokens, options.n_ctx, text.context_length)
        setattr(model, model.head_name, PromptedTextHead(text, tokens, options.n_ctx))
        return [f"{model.head_name}.ctx"]

    @staticmethod
    def _prompts(model: VisionClassifier, n_ctx: int) -> list[str]:
        context = " ".join([_PLACEHOLDER] * n_ctx)
        return [f"{context} {model.prompt_template.format(c)}" for c in model.class_names]

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
