"""One registry of tuning-method implementations; each method lives in its own module.

What a method is called, its options, the families it supports and whether it
accepts `train_head` are declared once, in `shared.methods` (light, so that the
spec validates without torch). A module here registers the implementation of
one declared name: `apply` wires the method's modules into a
`VisionClassifier` and returns the names of the parameters it trains; the
builder freezes everything else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypeVar

import torch

from shared.methods import METHODS, MethodInfo
from shared.models.base import VisionClassifier

__all__ = ["TuningMethod", "get_method", "list_methods", "register_method"]


class TuningMethod(ABC):
    name: ClassVar[str]

    @property
    def info(self) -> MethodInfo:
        """The method's declaration: options model, families, head rule."""
        return METHODS[self.name]

    @property
    def accepts_train_head(self) -> bool:
        return self.info.accepts_train_head

    @abstractmethod
    def apply(self, model: VisionClassifier, options: Any) -> list[str]:
        """Add the method's modules to `model`; return the names of the parameters it trains."""

    # Whether the trained model can be written as the family's plain weights (`plain_state`).
    mergeable: ClassVar[bool] = True

    def plain_state(self, model: VisionClassifier) -> dict[str, torch.Tensor]:
        """The model as the family's plain model holds it, the method's modules merged in.

        Methods that only change existing parameters (full, head, bias) have nothing
        to merge; a method that adds modules overrides this, or sets `mergeable` False.
        """
        return {n: t.detach() for n, t in model.state_dict().items()}


_METHODS: dict[str, TuningMethod] = {}

M = TypeVar("M", bound=type[TuningMethod])


def register_method(cls: M) -> M:
    """Class decorator: implement the method declared in `shared.methods` under `cls.name`."""
    if cls.name not in METHODS:
        raise ValueError(f"tuning method {cls.name!r} is not declared in shared.methods")
    if cls.name in _METHODS:
        raise ValueError(f"tuning method {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls()
    return cls


def list_methods() -> list[TuningMethod]:
    """Every registered implementation, by name."""
    return [_METHODS[name] for name in sorted(_METHODS)]


def get_method(name: str) -> TuningMethod:
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS))
        raise ValueError(f"method.name: unknown method {name!r} (known: {known})") from None
