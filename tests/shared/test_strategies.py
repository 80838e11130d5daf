"""The strategy declarations are the one source of strategy names and options."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shared.spec import AggregationSpec, FederationSpec, SpecError, parse_spec
from shared.strategies import STRATEGY_NAMES, STRATEGY_OPTIONS, FedAvgMOptions

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_declared_strategy_is_accepted_with_its_default_options(name: str) -> None:
    spec = AggregationSpec(strategy=name)

    assert spec.strategy_options() == STRATEGY_OPTIONS[name]()


def test_options_are_parsed_into_the_declared_model() -> None:
    spec = AggregationSpec(strategy="fedavgm", options={"momentum": 0.5})

    assert spec.strategy_options() == FedAvgMOptions(momentum=0.5)


def test_an_undeclared_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match=r"strategy\s+Input should be 'fedavg'"):
        AggregationSpec(strategy="bulyan")


def test_the_spec_schema_lists_the_declared_strategies_as_an_enum() -> None:
    schema = FederationSpec.model_json_schema()
    strategy = schema["$defs"]["AggregationSpec"]["properties"]["strategy"]

    assert strategy["enum"] == list(STRATEGY_NAMES)


def test_the_readme_names_every_declared_strategy() -> None:
    text = README.read_text(encoding="utf-8")
    line = text[text.index("Aggregation strategies:") : text.index("each with optional")]

    assert re.findall(r"`(\w+)`", line) == list(STRATEGY_NAMES)


FLOAT_OPTIONS = sorted(
    {
        (model.__name__, field)
        for model in STRATEGY_OPTIONS.values()
        for field, info in model.model_fields.items()
        if info.annotation is float
    }
)
MODELS = {model.__name__: model for model in STRATEGY_OPTIONS.values()}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(("model", "field"), FLOAT_OPTIONS)
def test_every_float_option_refuses_nan_and_infinity(model: str, field: str, value: float) -> None:
    with pytest.raises(ValidationError, match="Input should be a finite number"):
        MODELS[model].model_validate({field: value})


def _spec(strategy: str, min_updates: int) -> dict[str, Any]:
    return {
        "name": "fewest",
        "model": {"family": "hf_vit", "arch": "tiny"},
        "task": {"classes": ["a", "b"]},
        "method": {"name": "bias"},
        "rounds": {"quorum": min_updates, "min_updates": min_updates},
        "aggregation": {"strategy": strategy},
    }


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_accepts_a_spec_with_the_updates_it_declares_it_needs(name: str) -> None:
    fewest = STRATEGY_OPTIONS[name]().fewest_updates()

    assert parse_spec(_spec(name, fewest)).rounds.min_updates == fewest


@pytest.mark.parametrize(
    "name", [n for n in STRATEGY_NAMES if STRATEGY_OPTIONS[n]().fewest_updates() > 1]
)
def test_every_strategy_refuses_a_spec_with_one_update_fewer(name: str) -> None:
    fewest = STRATEGY_OPTIONS[name]().fewest_updates()

    with pytest.raises(SpecError, match=rf"must be at least {fewest} for {name} "):
        parse_spec(_spec(name, fewest - 1))
