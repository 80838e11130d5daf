"""What every model family hands to the tuning methods.

A family (open_clip, transformers ViT) turns a spec into a `VisionClassifier`:
an `nn.Module` mapping pixels [B, 3, H, W] to logits [B, classes] that also
names the parts the methods need (vision backbone, head, transformer blocks).
Methods only talk to this interface, so adding a family never touches them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Preprocess", "VisionClassifier", "seeded"]


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing of a family: square size, normalisation, resize filter."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


class VisionClassifier(nn.Module):
    """Base of the family wrappers: `forward(pixel_values) -> logits`."""

    family: str = ""
    backbone_name: str = ""  # attribute holding the vision backbone ("visual", "vit")
    head_name: str = ""  # attribute holding the classifier head ("head", "classifier")
    always_train_head: bool = False  # a freshly initialised head must learn
    preprocess: Preprocess
    # library objects a method may adopt while it is applied (CLIP's text tower);
    # dropped by the builder afterwards, so they never reach the state
    text_source: Any = None

    @property
    def backbone(self) -> nn.Module:
        module = getattr(self, self.backbone_name)
        assert isinstance(module, nn.Module)
        return module

    def param_names(self, prefix: str) -> list[str]:
        """Names of the parameters under the attribute `prefix`."""
        return [n for n, _ in self.named_parameters() if n.startswith(prefix + ".")]

    def head_param_names(self) -> list[str]:
        return self.param_names(self.head_name)

    def blocks(self) -> Sequence[nn.Module]:
        """Transformer blocks of the vision backbone, batch-first [B, L, D] in and out."""
        raise ValueError(f"the {self.family} vision tower has no transformer blocks")

    def block_mlp(self, block: nn.Module) -> nn.Module:
        """The MLP of a block: input is the normalised stream, output joins the residual."""
        raise NotImplementedError

    def lora_targets(self, kind: str) -> list[str]:
        """Module names LoRA wraps: kind `attn` (query/value) or `mlp` (both MLP linears)."""
        raise NotImplementedError

    @property
    def width(self) -> int:
        """Token width of the vision transformer."""
        raise NotImplementedError

    @property
    def patch_size(self) -> int:
        raise NotImplementedError


def _derived_seed(seed: int, purpose: str) -> int:
    digest = hashlib.sha256(f"fedtune:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@contextmanager
def seeded(seed: int, purpose: str) -> Iterator[None]:
    """Run a block with torch's CPU RNG seeded from (seed, purpose), restoring it after.

    Each random part (base init, head, method modules) has its own purpose, so
    e.g. LoRA's A matrices are the same whether the base came from a checkpoint
    or from random init.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derived_seed(seed, purpose))
        yield
