"""`adapter`: AdaptFormer bottleneck adapters (Chen et al., 2022) in every block.

Each transformer block gets a bottleneck (down-projection, ReLU,
up-projection) that runs in parallel with the block's MLP on the same
normalised input, scaled by `scale`, and is added to the MLP's output:
`x + MLP(LN(x)) + scale * up(relu(down(LN(x))))`. The up-projection starts at
zero, so the adapted model starts as the base model. Wiring uses a forward
hook on the MLP, which leaves every library parameter name unchanged; the
adapter itself lives at `<block>.adapter`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shared.methods import AdapterOptions
from shared.models.base import VisionClassifier
from shared.tuning.registry import TuningMethod, register_method


class Bottleneck(nn.Module):
    def __init__(self, width: int, dim: int, scale: float) -> None:
        super().__init__()
        self.down = nn.Linear(width, dim)
        self.up = nn.Linear(dim, width)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x))) * self.scale


class _AddParallel:
    """Forward hook: MLP output + adapter(MLP input)."""

    def __init__(self, adapter: Bottleneck) -> None:
        self.adapter = adapter

    def __call__(
        self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        return output + self.adapter(inputs[0])


@register_method
class Adapter(TuningMethod):
    name = "adapter"

    def apply(self, model: VisionClassifier, options: AdapterOptions) -> list[str]:
        for block in model.blocks():
            adapter = Bottleneck(model.width, options.dim, options.scale)
            block.add_module("adapter", adapter)
            model.block_mlp(block).register_forward_hook(_AddParallel(adapter))
        return sorted(n for n, _ in model.named_parameters() if ".adapter." in n)
