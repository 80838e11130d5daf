"""`vpt`: visual prompt tuning (Jia et al., 2022), shallow or deep.

`tokens` learnable prompt tokens are inserted right after the [CLS] token
where the embedded patch sequence enters the encoder (shallow); with `deep`,
every later block gets its own prompts, replacing the previous block's prompt
outputs. The prompt outputs are dropped after the last block, so pooling and
the head see the original sequence.

Where the sequence enters is the model's `token_entry()`: the first block for
the transformers ViT (as in VPT), but CLIP's `ln_pre`, the LayerNorm CLIP
applies to the whole sequence before its first block. The VPT ports for CLIP
(MaPLe's and IVLP's `VPT_shallow`, Khattak et al., 2023) concatenate the
first prompts after the positional embedding and *before* `ln_pre`, so they
are normalised like every other token; deeper prompts replace tokens inside
the transformer, after `ln_pre`, as here. Prompts that skipped `ln_pre` would
enter the first block at a scale unlike the patch tokens'.

Wiring uses forward pre-hooks (library parameter names stay unchanged); the
prompts live at `<backbone>.vpt_prompts`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from shared.methods import VptOptions
from shared.models.base import VisionClassifier
from shared.tuning.registry import TuningMethod, register_method


def _with_prompts(x: torch.Tensor, prompts: torch.Tensor, replace: int) -> torch.Tensor:
    """[CLS], prompts, then x's tokens after the first `1 + replace`."""
    expanded = prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :1], expanded, x[:, 1 + replace :]], dim=1)


class _Insert:
    """Forward pre-hook giving a block its prompts (inserted or replacing the previous ones)."""

    def __init__(self, prompts: nn.Parameter, layer: int, replace: int) -> None:
        self.prompts, self.layer, self.replace = prompts, layer, replace

    def __call__(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        x = _with_prompts(args[0], self.prompts[self.layer], self.replace)
        return (x, *args[1:]), kwargs


class _Strip:
    """Forward hook on the last block: drop the prompt outputs."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return torch.cat([output[:, :1], output[:, 1 + self.tokens :]], dim=1)


@register_method
class Vpt(TuningMethod):
    name = "vpt"
    mergeable = (
        False  # prompt tokens lengthen the sequence: no weight of the plain model holds them
    )

    def apply(self, model: VisionClassifier, options: VptOptions) -> list[str]:
        blocks = model.blocks()
        depth = len(blocks) if options.deep else 1
        prompts = nn.Parameter(torch.empty(depth, options.tokens, model.width))
        # VPT's init: uniform with the Xavier bound of a patch-embedding fan-in
        bound = math.sqrt(6.0 / (3 * model.patch_size**2 + model.width))
        nn.init.uniform_(prompts, -bound, bound)
        model.backbone.register_parameter("vpt_prompts", prompts)
        model.token_entry().register_forward_pre_hook(_Insert(prompts, 0, 0), with_kwargs=True)
        for i in range(1, depth):
            blocks[i].register_forward_pre_hook(
                _Insert(prompts, i, options.tokens), with_kwargs=True
            )
        blocks[-1].register_forward_hook(_Strip(options.tokens))
        return [f"{model.backbone_name}.vpt_prompts"]
