"""The aggregation strategies a spec may name, each with its typed options.

Declared here once, as the contract: the spec validates `aggregation.options`
against these models and the OpenAPI document lists the names. The maths lives
in the service (`aggregator_service/aggregation/`, one file per strategy), which
registers each implementation under one of these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from shared.validation import OneOf

__all__ = [
    "STRATEGY_NAMES",
    "STRATEGY_OPTIONS",
    "FedAvgMOptions",
    "FedOptOptions",
    "NoOptions",
    "StrategyName",
    "StrategyOptions",
    "TrimmedMeanOptions",
]


class StrategyOptions(BaseModel):
    """Base of strategy options: strict, frozen, every field described."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


class TrimmedMeanOptions(StrategyOptions):
    trim_fraction: float = Field(
        default=0.1, ge=0, lt=0.5, description="Fraction cut from each end, per coordinate."
    )


# name -> options model, in the order documents list them
STRATEGY_OPTIONS: Mapping[str, type[StrategyOptions]] = MappingProxyType(
    {
        "fedavg": NoOptions,
        "fedavgm": FedAvgMOptions,
        "fedadam": FedOptOptions,
        "fedyogi": FedOptOptions,
        "fedadagrad": FedOptOptions,
        "median": NoOptions,
        "trimmed_mean": TrimmedMeanOptions,
    }
)
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGY_OPTIONS)
StrategyName = Annotated[str, OneOf(STRATEGY_NAMES)]
