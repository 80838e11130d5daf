"""One registry of tuning methods; each method lives in its own module.

A method has a typed options model (unknown or invalid options are refused
with the option's name), the families it supports, and `apply`, which wires
its modules into a `VisionClassifier` and returns the names of the parameters
it trains. The builder freezes everything else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.models.base import VisionClassifier
from shared.spec import MethodName, format_validation_error

__all__ = [
    "NoOptions",
    "Options",
    "TuningMethod",
    "get_method",
    "method_names",
    "register_method",
]


class Options(BaseModel):
    """Base of method options: strict, frozen, every field described."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(Options):
    pass


class TuningMethod(ABC):
    name: ClassVar[str]
    options_model: ClassVar[type[Options]] = NoOptions
    families: ClassVar[frozenset[str]] = frozenset({"open_clip", "hf_vit"})
    # False when the method itself produces the head (train_head would be meaningless)
    accepts_train_head: ClassVar[bool] = True

    def parse_options(self, raw: Mapping[str, Any]) -> Options:
        try:
            return self.options_model.model_validate(dict(raw))
        except ValidationError as exc:
            message = format_validation_error(exc)
            raise ValueError(f"{_prefix_fields(message)} (method {self.name})") from None

    def check_family(self, family: str) -> None:
        if family not in self.families:
            supported = ", ".join(sorted(self.families))
            raise ValueError(
                f"method.name: {self.name} supports model.family {supported}, not {family}"
            )

    @abstractmethod
    def apply(self, model: VisionClassifier, options: Any) -> list[str]:
        """Add the method's modules to `model`; return the names of the parameters it trains."""


def _prefix_fields(message: str) -> str:
    return "; ".join(f"method.options.{part}" for part in message.split("; "))


_METHODS: dict[str, TuningMethod] = {}

M = TypeVar("M", bound=type[TuningMethod])


def register_method(cls: M) -> M:
    """Class decorator: make a method available by its `name`."""
    if cls.name in _METHODS:
        raise ValueError(f"tuning method {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> TuningMethod:
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS))
        raise ValueError(f"method.name: unknown method {name!r} (known: {known})") from None


def method_names(family: str | None = None) -> list[str]:
    """Registered method names (those supporting `family` when given), in registry order."""
    order = list(get_args(MethodName))
    names = [n for n, m in _METHODS.items() if family is None or family in m.families]
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))
