"""The aggregation strategies a spec may name, each with its typed options.

Declared here once, as the contract: the spec validates `aggregation.options`
against these models and the OpenAPI document lists the names. The maths lives
in the service (`aggregator_service/aggregation/`, one file per strategy), which
registers each implementation under one of these names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from types import MappingProxyType
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from shared.validation import OneOf

__all__ = [
    "STRATEGY_NAMES",
    "STRATEGY_OPTIONS",
    "FedAvgMOptions",
    "FedOptOptions",
    "KrumOptions",
    "MedianOptions",
    "MultiKrumOptions",
    "NoOptions",
    "StrategyName",
    "StrategyOptions",
    "TrimmedMeanOptions",
]


class StrategyOptions(BaseModel):
    """Base of strategy options: strict, frozen, finite, every field described."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def fewest_updates(self) -> int:
        """The fewest updates a round needs for the strategy to work as declared."""
        return 1

    def check_min_updates(self, strategy: str, min_updates: int) -> None:
        """Refuse, in one line naming the field, a `rounds.min_updates` too low for these options.

        A round may close with as few as `min_updates` updates (the deadline), so a
        federation whose minimum is below `fewest_updates()` could never be robust as declared.
        """
        need = self.fewest_updates()
        if min_updates < need:
            raise ValueError(
                f"rounds.min_updates ({min_updates}) must be at least {need} for {strategy} "
                f"{self._needs()}; raise rounds.min_updates (and quorum) {self._remedy()}"
            )

    def _needs(self) -> str:
        return "with these options"

    def _remedy(self) -> str:
        return "or change the options"


class NoOptions(StrategyOptions):
    pass


class FedAvgMOptions(StrategyOptions):
    server_lr: float = Field(default=1.0, gt=0, description="Server learning rate.")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="Server momentum.")


class FedOptOptions(StrategyOptions):
    server_lr: float = Field(default=0.01, gt=0, description="Server learning rate (eta).")
    beta1: float = Field(default=0.9, ge=0, lt=1, description="First-moment decay.")
    beta2: float = Field(default=0.99, ge=0, lt=1, description="Second-moment decay.")
    tau: float = Field(default=1e-3, gt=0, description="Adaptivity (epsilon) term.")


class MedianOptions(NoOptions):
    def fewest_updates(self) -> int:
        return 3

    def _needs(self) -> str:
        return "(the median of two updates is their mean, which one bad update moves anywhere)"

    def _remedy(self) -> str:
        return "or use another strategy"


class TrimmedMeanOptions(StrategyOptions):
    trim_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=0.5,
        description="β: floor(β·n) of a round's n values are cut from each end, per coordinate; "
        "rounds.min_updates must be at least 1/β, so that every round cuts one (fedavg is the "
        "plain mean).",
    )

    def fewest_updates(self) -> int:
        return math.ceil(1 / Fraction(self.trim_fraction))

    def _needs(self) -> str:
        return (
            f"with trim_fraction {self.trim_fraction} (floor({self.trim_fraction} x n) of n "
            f"updates are cut from each end: none below {self.fewest_updates()})"
        )


class KrumOptions(StrategyOptions):
    num_byzantine: int = Field(
        default=1,
        ge=0,
        le=10_000,
        description="f: how many updates of a round may be Byzantine; every round then needs "
        "more than 2f + 2 updates (rounds.min_updates at least 2f + 3).",
    )

    def fewest_updates(self) -> int:
        return 2 * self.num_byzantine + 3

    def _needs(self) -> str:
        return f"with num_byzantine {self.num_byzantine} (Krum needs more than 2f + 2 updates)"


class MultiKrumOptions(KrumOptions):
    num_selected: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="m: how many of the best-scored updates are averaged (uniformly); "
        "null = n - f, all but f of the round's n updates.",
    )

    def fewest_updates(self) -> int:
        need = super().fewest_updates()
        if self.num_selected is None:
            return need
        return max(need, self.num_byzantine + self.num_selected)

    def _needs(self) -> str:
        if self.num_selected is None:
            return super()._needs()
        return (
            f"with num_byzantine {self.num_byzantine} and num_selected {self.num_selected} "
            "(more than 2f + 2 updates, and at least f + m)"
        )


# name -> options model, in the order documents list them
STRATEGY_OPTIONS: Mapping[str, type[StrategyOptions]] = MappingProxyType(
    {
        "fedavg": NoOptions,
        "fedavgm": FedAvgMOptions,
        "fedadam": FedOptOptions,
        "fedyogi": FedOptOptions,
        "fedadagrad": FedOptOptions,
        "median": MedianOptions,
        "trimmed_mean": TrimmedMeanOptions,
        "krum": KrumOptions,
        "multi_krum": MultiKrumOptions,
    }
)
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGY_OPTIONS)
StrategyName = Annotated[str, OneOf(STRATEGY_NAMES)]
