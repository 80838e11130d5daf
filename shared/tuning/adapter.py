"""`adapter`: bottleneck adapters in every block, in one of three published styles.

A bottleneck is down-projection, ReLU, dropout, up-projection, times `scale`.
The up-projection (weight and bias) starts at zero, so every style starts as
the base model exactly. `style` says where the bottlenecks sit:

- `parallel` (the default): AdaptFormer (Chen et al., 2022). One bottleneck
  per block, beside the MLP on the same normalised input, added to the MLP's
  output: `x + MLP(LN(x)) + scale * up(relu(down(LN(x))))`. AdaptFormer uses
  width 64, scale 0.1 and dropout 0.1 for ViT-B; FedTune's defaults are width
  8, scale 0.1, dropout 0 (the defaults federations were created with: a
  different width would change their trainable state). Ask for
  `{dim: 64, dropout: 0.1}` to get the paper's.
- `houlsby`: Houlsby et al., 2019. Two sequential bottlenecks per block, one
  on the attention's output and one on the MLP's, each with its own skip
  connection, before the block's residual add: `h + up(relu(down(h)))`.
  Default width 64 (the paper tries 8, 64 and 256), scale 1, no dropout.
- `pfeiffer`: Pfeiffer et al., 2021 (AdapterFusion). One sequential
  bottleneck on the MLP's output only, as in `houlsby`. Default width is the
  model width over the paper's reduction factor 16 (48 for ViT-B's 768),
  scale 1, no dropout.

Parameters: `blocks x adapters x (2 x width x dim + dim + width)` with one
adapter per block for parallel and pfeiffer, two for houlsby.

Wiring uses forward hooks on the MLP (and the attention), which leaves every
library parameter name unchanged; the MLP's adapter lives at
`<block>.adapter`, houlsby's attention adapter at `<block>.adapter_attn`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shared.methods import AdapterOptions
from shared.models.base import VisionClassifier
from shared.tuning.registry import TuningMethod, register_method

__all__ = ["Adapter", "Bottleneck", "style_defaults"]

# FedTune's parallel width (see above); Houlsby's 64; Pfeiffer's reduction factor
_PARALLEL_DIM, _HOULSBY_DIM, _PFEIFFER_REDUCTION = 8, 64, 16
_SCALES = {"parallel": 0.1, "houlsby": 1.0, "pfeiffer": 1.0}


def style_defaults(options: AdapterOptions, width: int) -> tuple[int, float]:
    """Bottleneck width and scale for `options`, the style's defaults filling what is unset."""
    dims = {
        "parallel": _PARALLEL_DIM,
        "houlsby": _HOULSBY_DIM,
        "pfeiffer": max(1, width // _PFEIFFER_REDUCTION),
    }
    dim = options.dim if options.dim is not None else dims[options.style]
    scale = options.scale if options.scale is not None else _SCALES[options.style]
    return dim, scale


class Bottleneck(nn.Module):
    def __init__(self, width: int, dim: int, scale: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Linear(width, dim)
        self.up = nn.Linear(dim, width)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(torch.relu(self.down(x)))) * self.scale


class _AddParallel:
    """Forward hook: MLP output + adapter(MLP input)."""

    def __init__(self, adapter: Bottleneck) -> None:
        self.adapter = adapter

    def __call__(
        self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        return output + self.adapter(inputs[0])


class _AddSequential:
    """Forward hook: output + adapter(output), on a tensor or a tuple's first item."""

    def __init__(self, adapter: Bottleneck) -> None:
        self.adapter = adapter

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, tuple):
            first = output[0]
            return (first + self.adapter(first), *output[1:])
        return output + self.adapter(output)


@register_method
class Adapter(TuningMethod):
    name = "adapter"
    mergeable = False  # a ReLU bottleneck is no linear change of any existing weight

    def apply(self, model: VisionClassifier, options: AdapterOptions) -> list[str]:
        dim, scale = style_defaults(options, model.width)

        def bottleneck() -> Bottleneck:
            return Bottleneck(model.width, dim, scale, options.dropout)

        for block in model.blocks():
            mlp_adapter = bottleneck()
            block.add_module("adapter", mlp_adapter)
            if options.style == "parallel":
                model.block_mlp(block).register_forward_hook(_AddParallel(mlp_adapter))
                continue
            if options.style == "houlsby":
                attn_adapter = bottleneck()
                block.add_module("adapter_attn", attn_adapter)
                model.block_attention(block).register_forward_hook(_AddSequential(attn_adapter))
            model.block_mlp(block).register_forward_hook(_AddSequential(mlp_adapter))
        return sorted(
            n for n, _ in model.named_parameters() if ".adapter." in n or ".adapter_attn." in n
        )
