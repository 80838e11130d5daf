"""`head`: train the classifier only (a linear probe).

For CLIP the head starts as the zero-shot text embeddings of the class prompts;
for ViT it is the new linear layer.
"""

from __future__ import annotations

from typing import Any

from shared.models.base import VisionClassifier
from shared.tuning.registry import TuningMethod, register_method


@register_method
class Head(TuningMethod):
    name = "head"

    def apply(self, model: VisionClassifier, options: Any) -> list[str]:
        return model.head_param_names()
