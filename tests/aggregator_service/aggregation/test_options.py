"""Strategy options are checked when the spec is loaded, with a message naming the field."""

from __future__ import annotations

import pytest

from shared.spec import AggregationSpec, SpecError, parse_spec

BAD_OPTIONS = [
    ("trimmed_mean", {"trim_fraction": 0.6}, "trim_fraction: Input should be less than 0.5"),
    ("trimmed_mean", {"trim_fraction": 0.5}, "trim_fraction: Input should be less than 0.5"),
    ("trimmed_mean", {"trim_fraction": -0.1}, "trim_fraction: Input should be greater than"),
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
