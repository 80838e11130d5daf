"""`bias`: BitFit (Ben Zaken et al., 2022) — train every bias of the vision backbone.

Every parameter of the vision tower whose name ends in `bias`: attention and
MLP projections, LayerNorms and the patch embedding when it has one. About
0.12 % of ViT-B/16; the FedTune study found it the best method on a strong
pre-trained model.
"""

from __future__ import annotations

from typing import Any

from shared.models.base import VisionClassifier
from shared.tuning.registry import TuningMethod, register_method


@register_method
class Bias(TuningMethod):
    name = "bias"

    def apply(self, model: VisionClassifier, options: Any) -> list[str]:
        return [n for n in model.param_names(model.backbone_name) if n.endswith("bias")]
