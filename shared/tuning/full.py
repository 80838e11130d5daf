"""`full`: fine-tune every parameter (the communication ceiling of the paper's table)."""

from __future__ import annotations

from typing import Any

from shared.models.base import VisionClassifier
from shared.tuning.registry import TuningMethod, register_method


@register_method
class Full(TuningMethod):
    name = "full"

    def apply(self, model: VisionClassifier, options: Any) -> list[str]:
        return [n for n, _ in model.named_parameters()]
