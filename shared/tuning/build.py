"""`build(spec)`: the model a federation trains, identical on every machine.

Order matters for determinism: the base (pretrained or seeded random init),
then the head (seeded), then the method's modules (seeded on their own), then
the freeze. With `base_state` the architecture is built without touching any
file or the network and the frozen tensors are loaded from it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from shared.models import build_family, seeded
from shared.spec import FederationSpec
from shared.tuning.built import BuiltModel
from shared.tuning.registry import get_method

__all__ = ["build"]


def build(spec: FederationSpec, base_state: Mapping[str, torch.Tensor] | None = None) -> BuiltModel:
    """Build `spec`'s model with its method applied (see the module docstring)."""
    built = _build(spec, load_weights=base_state is None, device=torch.device("cpu"))
    if base_state is not None:
        built.load_base_state(base_state)
    return built


def build_for_counting(spec: FederationSpec) -> BuiltModel:
    """The same model on the `meta` device: names and shapes, no memory, no weights."""
    return _build(spec, load_weights=False, device=torch.device("meta"))


def _build(spec: FederationSpec, *, load_weights: bool, device: torch.device) -> BuiltModel:
    method = get_method(spec.method.name)
    # checked again: specs made by `model_copy` (method reports) skip validation
    options = spec.method.method_options(spec.model.family)
    model = build_family(spec, load_weights=load_weights, device=device)
    with seeded(spec.seed, f"method:{method.name}"), device:
        own = method.apply(model, options)
    model.release_text_tower()
    head = model.head_param_names()
    train_head = spec.method.train_head or model.always_train_head
    own_set = set(own)
    extra_head = [n for n in head if n not in own_set] if train_head else []
    trainable = own_set | set(extra_head)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    model.train(False)
    return BuiltModel(model, model.preprocess, own, extra_head)
