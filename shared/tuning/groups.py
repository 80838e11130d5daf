"""Parameter groups for the local optimiser: the trainable tensors weight decay spares.

Weight decay pulls a tensor towards zero. That regularises weight matrices
(full fine-tuning, LoRA's A and B, adapter and new-head linears), but it only
harms tensors whose scale or position carries their meaning: biases and
normalisation weights (all BitFit trains), prompt tokens (VPT's prompts, CoOp's
context vectors), position and class embeddings, and CLIP's zero-shot head
(unit-norm class text embeddings). Those train with weight decay 0, as BitFit,
VPT, CoOp and AdaptFormer train (and as timm and the HF Trainer exempt biases
and norms). Policy `none` decays every trainable tensor alike.

Classification goes by the module that holds a parameter (its type and the
parameter's own name there), so it is the same under any prefix a wrapper adds.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from shared.models.open_clip_family import FixedHead
from shared.tuning.text_prompt import PromptedTextHead

__all__ = ["NoDecayPolicy", "decay_exempt", "param_groups"]

NoDecayPolicy = Literal["biases_norms_prompts", "none"]
Exemption = Literal["bias", "norm", "prompt", "embedding", "zero-shot head"]

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, _BatchNorm, _InstanceNorm)
# VPT registers its prompts under this name on the vision backbone
_PROMPTS = frozenset({"vpt_prompts"})
# open_clip's and transformers' ViT token embeddings
_EMBEDDINGS = frozenset(
    {"class_embedding", "positional_embedding", "cls_token", "position_embeddings"}
)


def _exemption(module: nn.Module, local: str) -> Exemption | None:
    """Why the parameter `local` of `module` is exempt from decay (None: it decays)."""
    if local.endswith("bias"):
        return "bias"
    if isinstance(module, _NORMS):
        return "norm"
    if local in _PROMPTS or (isinstance(module, PromptedTextHead) and local == "ctx"):
        return "prompt"
    if local in _EMBEDDINGS:
        return "embedding"
    if isinstance(module, FixedHead):
        return "zero-shot head"
    return None


def decay_exempt(model: nn.Module) -> dict[str, Exemption]:
    """Every parameter of `model` that weight decay spares, by name, with the reason."""
    exempt: dict[str, Exemption] = {}
    for prefix, module in model.named_modules():
        for local, param in module.named_parameters(recurse=False):
            reason = _exemption(module, local)
            if param is not None and reason is not None:
                exempt[f"{prefix}.{local}" if prefix else local] = reason
    return exempt


def param_groups(
    model: nn.Module, weight_decay: float, policy: NoDecayPolicy = "biases_norms_prompts"
) -> list[dict[str, Any]]:
    """Optimiser parameter groups of `model`'s trainable tensors (`requires_grad`).

    Group "decay" has `weight_decay`, group "no_decay" (see the module docstring)
    has 0; an empty group is left out. Parameters keep the model's order.
    """
    exempt = decay_exempt(model) if policy == "biases_norms_prompts" else {}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name in exempt else decay).append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
