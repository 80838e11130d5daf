"""A trained model as the family's plain weights: what a standard checkpoint holds.

Methods that only change existing parameters (full, head, bias) are their
model's state as it is. LoRA adds each low-rank product to the weight it
adapts (the fused `in_proj_weight` of open_clip's attention, peft's wrapped
linears) and CoOp's learned prompts become the class embeddings of CLIP's
zero-shot head. The result has exactly the names and shapes of the family's
model without any method (`shared.models.build_family`), so it loads strictly
into it and into the library's own classes. Adapters and visual prompts add
computation no plain weight can hold: they are refused with a one-line reason.
"""

from __future__ import annotations

import torch

from shared.tuning.built import BuiltModel
from shared.tuning.registry import get_method, list_methods

__all__ = ["NotMergeableError", "mergeable_methods", "plain_state"]


class NotMergeableError(ValueError):
    """The method adds modules that no plain checkpoint of the family can hold."""


def mergeable_methods() -> list[str]:
    """Names of the methods whose trained model can be written as plain weights."""
    return [method.name for method in list_methods() if method.mergeable]


def plain_state(built: BuiltModel, method: str) -> dict[str, torch.Tensor]:
    """`built`'s weights merged into the family's plain model (detached CPU tensors, by name)."""
    impl = get_method(method)
    if not impl.mergeable:
        raise NotMergeableError(
            f"method {method!r} adds modules that cannot be merged into plain weights, so no "
            f"standard checkpoint holds it (methods that export: {', '.join(mergeable_methods())})"
        )
    state = impl.plain_state(built.model)
    return {name: t.detach().to("cpu").contiguous() for name, t in sorted(state.items())}
