"""Krum's options: checked when the spec is parsed, one line naming the field; too few updates."""

from __future__ import annotations

import pytest

from shared.spec import AggregationSpec, SpecError, parse_spec
from shared.strategies import KrumOptions, MultiKrumOptions

BAD_OPTIONS = [
    ("krum", {"num_byzantine": -1}, "num_byzantine: Input should be greater than or equal to 0"),
    ("krum", {"num_byzantine": 1.5}, "num_byzantine: Input should be a valid integer"),
    ("krum", {"num_byzantine": "one"}, "num_byzantine: Input should be a valid integer"),
    ("krum", {"num_selected": 3}, "num_selected: Extra inputs are not permitted"),
    ("multi_krum", {"num_selected": 0}, "num_selected: Input should be greater than or equal to 1"),
    ("multi_krum", {"num_byzantine": -2}, "num_byzantine: Input should be greater than or equal"),
    ("multi_krum", {"f": 1}, "f: Extra inputs are not permitted"),
]


def _spec_data(strategy: str, options: dict) -> dict:
    return {
        "name": "krum-opts",
        "model": {"family": "hf_vit", "arch": "tiny"},
        "task": {"classes": ["a", "b"]},
        "method": {"name": "bias"},
        "rounds": {"quorum": 9, "min_updates": 9},
        "aggregation": {"strategy": strategy, "options": options},
    }


@pytest.mark.parametrize(("strategy", "options", "message"), BAD_OPTIONS)
def test_bad_krum_options_are_refused_in_one_line_naming_the_option(strategy, options, message):
    with pytest.raises(SpecError) as err:
        parse_spec(_spec_data(strategy, options))

    text = str(err.value)
    assert f"aggregation: aggregation.options for {strategy}: {message}" in text
    assert "\n" not in text


def test_defaults_are_one_byzantine_update_and_all_but_f_selected():
    assert AggregationSpec(strategy="krum").strategy_options() == KrumOptions(num_byzantine=1)
    assert AggregationSpec(strategy="multi_krum").strategy_options() == MultiKrumOptions(
        num_byzantine=1, num_selected=None
    )


@pytest.mark.parametrize(
    ("options", "fewest"),
    [
        (KrumOptions(num_byzantine=0), 3),
        (KrumOptions(num_byzantine=1), 5),
        (KrumOptions(num_byzantine=2), 7),
        (MultiKrumOptions(num_byzantine=2), 7),
        (MultiKrumOptions(num_byzantine=2, num_selected=3), 7),
        (MultiKrumOptions(num_byzantine=2, num_selected=6), 8),
    ],
)
def test_krum_needs_more_than_2f_plus_2_updates_and_multi_krum_at_least_f_plus_m(options, fewest):
    assert options.fewest_updates() == fewest
    options.check_min_updates("krum", fewest)
    with pytest.raises(ValueError, match=rf"rounds.min_updates \({fewest - 1}\) must be at least"):
        options.check_min_updates("krum", fewest - 1)


def test_a_minimum_too_low_for_krum_is_said_in_one_line_naming_the_fields():
    with pytest.raises(ValueError) as err:
        KrumOptions(num_byzantine=2).check_min_updates("krum", 6)

    assert str(err.value) == (
        "rounds.min_updates (6) must be at least 7 for krum with num_byzantine 2 "
        "(Krum needs more than 2f + 2 updates); raise rounds.min_updates (and quorum) "
        "or change the options"
    )


def test_a_spec_whose_rounds_may_close_too_small_for_krum_is_refused():
    data = _spec_data("krum", {"num_byzantine": 2}) | {"rounds": {"quorum": 6, "min_updates": 6}}
    with pytest.raises(SpecError, match=r"rounds.min_updates \(6\) must be at least 7 for krum"):
        parse_spec(data)
