"""Strategy options are checked when the spec is loaded, with a message naming the field."""

from __future__ import annotations

import pytest

from aggregator_service.aggregation.trimmed_mean import trim_count
from shared.spec import AggregationSpec, SpecError, parse_spec
from shared.strategies import TrimmedMeanOptions

BAD_OPTIONS = [
    ("trimmed_mean", {"trim_fraction": 0.6}, "trim_fraction: Input should be less than 0.5"),
    ("trimmed_mean", {"trim_fraction": 0.5}, "trim_fraction: Input should be less than 0.5"),
    ("trimmed_mean", {"trim_fraction": -0.1}, "trim_fraction: Input should be greater than"),
    ("trimmed_mean", {"trim_fraction": 0}, "trim_fraction: Input should be greater than 0"),
    ("trimmed_mean", {"trim_fration": 0.1}, "trim_fration: Extra inputs are not permitted"),
    ("fedadam", {"beta1": 1.0}, "beta1: Input should be less than 1"),
    ("fedyogi", {"tau": 0}, "tau: Input should be greater than 0"),
    ("fedadagrad", {"server_lr": "fast"}, "server_lr: Input should be a valid number"),
    ("fedavgm", {"momentum": 0.9, "nesterov": True}, "nesterov: Extra inputs are not permitted"),
    ("fedavg", {"momentum": 0.9}, "momentum: Extra inputs are not permitted"),
    ("median", {"trim_fraction": 0.1}, "trim_fraction: Extra inputs are not permitted"),
]


def _spec_data(strategy: str, options: dict) -> dict:
    return {
        "name": "opts",
        "model": {"family": "hf_vit", "arch": "tiny"},
        "task": {"classes": ["a", "b"]},
        "method": {"name": "bias"},
        "aggregation": {"strategy": strategy, "options": options},
    }


@pytest.mark.parametrize(("strategy", "options", "message"), BAD_OPTIONS)
def test_bad_strategy_options_are_refused_naming_the_option(strategy, options, message):
    with pytest.raises(SpecError) as err:
        parse_spec(_spec_data(strategy, options))

    assert f"aggregation: aggregation.options for {strategy}: {message}" in str(err.value)


def test_options_default_when_left_out():
    opts = AggregationSpec(strategy="fedadam").strategy_options()

    assert (opts.server_lr, opts.beta1, opts.beta2, opts.tau) == (0.01, 0.9, 0.99, 1e-3)


# (strategy, options, min_updates, fewest it needs)
TOO_FEW = [
    ("trimmed_mean", {}, 9, 10),
    ("trimmed_mean", {"trim_fraction": 0.2}, 4, 5),
    ("trimmed_mean", {"trim_fraction": 0.25}, 3, 4),
    ("trimmed_mean", {"trim_fraction": 0.49}, 2, 3),
    ("median", {}, 2, 3),
]


@pytest.mark.parametrize(("strategy", "options", "min_updates", "fewest"), TOO_FEW)
def test_a_robust_strategy_that_could_close_a_round_as_a_plain_mean_is_refused(
    strategy, options, min_updates, fewest
):
    data = _spec_data(strategy, options) | {
        "rounds": {"quorum": min_updates, "min_updates": min_updates}
    }

    with pytest.raises(SpecError) as err:
        parse_spec(data)

    assert str(err.value).startswith(
        f"rounds.min_updates ({min_updates}) must be at least {fewest} for {strategy} "
    )


@pytest.mark.parametrize(("strategy", "options", "min_updates", "fewest"), TOO_FEW)
def test_a_robust_strategy_is_accepted_with_the_updates_it_needs(
    strategy, options, min_updates, fewest
):
    data = _spec_data(strategy, options) | {"rounds": {"quorum": fewest, "min_updates": fewest}}

    spec = parse_spec(data)

    assert spec.rounds.min_updates == fewest


def test_the_default_trimmed_mean_spec_says_what_min_updates_it_needs():
    with pytest.raises(SpecError) as err:
        parse_spec(_spec_data("trimmed_mean", {}))

    assert str(err.value) == (
        "rounds.min_updates (2) must be at least 10 for trimmed_mean with trim_fraction 0.1 "
        "(floor(0.1 x n) of n updates are cut from each end: none below 10); "
        "raise rounds.min_updates (and quorum) or change the options"
    )


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.33, 0.4, 0.49])
def test_trimmed_mean_needs_exactly_the_updates_at_which_it_first_trims(fraction):
    need = TrimmedMeanOptions(trim_fraction=fraction).fewest_updates()

    assert (trim_count(need - 1, fraction), trim_count(need, fraction)) == (0, 1)
