"""What every model family hands to the tuning methods.

A family (open_clip, transformers ViT) turns a spec into a `VisionClassifier`:
an `nn.Module` mapping pixels [B, 3, H, W] to logits [B, classes] that also
names the parts the methods need (vision backbone, head, transformer blocks).
Methods only talk to this interface, so adding a family never touches them.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from shared.spec import PreprocessSpec
from shared.validation import format_validation_error

__all__ = ["Preprocess", "TextTower", "VisionClassifier", "checked_preprocess", "seeded"]


# A model's image preprocessing: what a spec's `model.preprocess` states (size, mean, std,
# resize filter), so the base's own and a stated one are one type.
Preprocess = PreprocessSpec


def checked_preprocess(
    stated: PreprocessSpec | None, size: int, mean: Any, std: Any, interpolation: str, source: str
) -> Preprocess:
    """`model.preprocess` where the spec states it, else the base's own, checked as the spec
    checks it (`source` names where the base's came from).

    The model takes `size`-pixel images only, so a stated size must be that one.
    """
    if stated is not None:
        if stated.size != size:
            raise ValueError(
                f"model.preprocess.size: the model takes {size}-pixel images, not {stated.size}"
            )
        return stated
    try:
        return PreprocessSpec(size=size, mean=mean, std=std, interpolation=interpolation)
    except ValidationError as exc:
        raise ValueError(
            f"{source}: unusable image preprocessing ({format_validation_error(exc)}); "
            "state model.preprocess in the spec"
        ) from None


class TextTower(nn.Module, ABC):
    """A CLIP-style text encoder that runs on token embeddings, for a method to adopt.

    CoOp (`text_prompt`) puts learned vectors in place of some token embeddings
    and encodes the result. A method that keeps the tower registers it as a
    submodule, which makes the tower part of the frozen base.
    """

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Tokens per prompt, padding included."""

    @property
    @abstractmethod
    def width(self) -> int:
        """Width of a token embedding."""

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [len(texts), context_length] on the tower's device; 0 pads."""

    @abstractmethod
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings [C, L, width] of token ids [C, L]."""

    @abstractmethod
    def encode(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Text features [C, D] of token embeddings [C, L, width] (`tokens` for pooling)."""


class VisionClassifier(nn.Module):
    """Base of the family wrappers: `forward(pixel_values) -> logits`."""

    family: str = ""
    backbone_name: str = ""  # attribute holding the vision backbone ("visual", "vit")
    head_name: str = ""  # attribute holding the classifier head ("head", "classifier")
    always_train_head: bool = False  # a freshly initialised head must learn
    preprocess: Preprocess
    # the task, as CLIP's class prompts phrase it
    class_names: Sequence[str] = ()
    prompt_template: str = "{}"

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

    def block_attention(self, block: nn.Module) -> nn.Module:
        """The self-attention of a block: its output's first item joins the residual."""
        raise NotImplementedError

    def token_entry(self) -> nn.Module:
        """The module whose first input is the embedded token sequence ([CLS] first).

        The first block, unless the tower normalises the sequence before it
        (CLIP's `ln_pre`): prompt tokens enter here, as the original inputs do.
        """
        return self.blocks()[0]

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

    def text_tower(self) -> TextTower:
        """The family's text encoder, for a method to adopt while it is applied.

        It is no part of the model, nor of its state, unless the method registers
        it; the builder calls `release_text_tower` once the method is applied.
        """
        raise ValueError(f"the {self.family} family has no text tower")

    def release_text_tower(self) -> None:
        """Let go of the text tower a method did not adopt (frees its memory)."""


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
