"""The strategy declarations are the one source of strategy names and options."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.spec import AggregationSpec, FederationSpec
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
