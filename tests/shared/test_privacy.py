"""The privacy sections of a spec and the accountant wrapper.

Bad combinations are refused in one line naming the field; ε comes from Opacus's
accountants, checked here against them called directly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from opacus.accountants import PRVAccountant, RDPAccountant

from shared.privacy import DP_STRATEGIES, epsilon
from shared.spec import DEFAULT_CLIP_NORM, SpecError, parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PRIVACY = {
    "mechanism": "central_gaussian",
    "clip_norm": 0.5,
    "noise_multiplier": 1.1,
    "delta": 1e-5,
    "max_epsilon": 20.0,
}
DP_SGD = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5}


def _spec(**changes: Any) -> dict[str, Any]:
    """The tiny CLIP example with central privacy and top-level sections changed."""
    data: dict[str, Any] = yaml.safe_load((EXAMPLES / "tiny-clip-bias.yaml").read_text())
    data["privacy"] = dict(PRIVACY)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = {**data.get(key, {}), **value}
    return data


def test_privacy_clip_norm_sets_the_aggregation_clip_for_every_method() -> None:
    assert parse_spec(_spec()).aggregation.clip_norm == 0.5
    full = parse_spec(_spec(method={"name": "full"}))
    assert full.aggregation.clip_norm == 0.5
    same = parse_spec(_spec(aggregation={"clip_norm": 0.5, "weighting": "uniform"}))
    assert same.aggregation.clip_norm == 0.5
    # without privacy nothing changes
    assert parse_spec(_spec(privacy=None)).aggregation.clip_norm == DEFAULT_CLIP_NORM
    assert parse_spec(_spec(privacy=None, method={"name": "full"})).aggregation.clip_norm is None


@pytest.mark.parametrize("strategy", DP_STRATEGIES)
def test_averaging_strategies_accept_central_privacy(strategy: str) -> None:
    spec = parse_spec(_spec(aggregation={"strategy": strategy}))
    assert spec.privacy is not None and spec.privacy.noise_multiplier == 1.1


BAD = [
    ({"aggregation": {"clip_norm": 1.0}}, r"aggregation\.clip_norm \(1\.0\) contradicts privacy"),
    ({"aggregation": {"clip_norm": None}}, r"aggregation\.clip_norm \(null\) contradicts"),
    ({"aggregation": {"strategy": "median"}}, r"privacy: .*aggregation\.strategy median"),
    ({"aggregation": {"strategy": "trimmed_mean"}}, r"aggregation\.strategy trimmed_mean"),
    (
        {"aggregation": {"strategy": "krum"}, "rounds": {"quorum": 5, "min_updates": 5}},
        r"aggregation\.strategy krum",
    ),
    ({"aggregation": {"weighting": "num_examples"}}, r"^aggregation\.weighting: .*uniform"),
    ({"privacy": {"max_epsilon": 0.5}}, r"privacy\.max_epsilon \(0\.5\) is below the ε of a"),
    ({"privacy": {"noise_multiplier": 0}}, r"^privacy\.noise_multiplier: "),
    ({"privacy": {"delta": 1.0}}, r"^privacy\.delta: "),
    ({"privacy": {"clip_norm": -1}}, r"^privacy\.clip_norm: "),
    ({"privacy": {"mechanism": "laplace"}}, r"^privacy\.mechanism: "),
    ({"privacy": {"accountant": "moments"}}, r"^privacy\.accountant: "),
    ({"privacy": {"epsilon": 3}}, r"^privacy\.epsilon: "),
    ({"privacy": {"noise_source": "dev-random"}}, r"^privacy\.noise_source: "),
    ({"privacy": {"max_epsilon": float("inf")}}, r"^privacy\.max_epsilon: .*finite"),
    ({"privacy": {"clip_norm": float("nan")}}, r"^privacy\.clip_norm: .*finite"),
    (
        {"local_training": {"dp": {**DP_SGD, "noise_source": "urandom"}}},
        r"^local_training\.dp\.noise_source: ",
    ),
    (
        {"local_training": {"dp": {**DP_SGD, "max_grad_norm": float("inf")}}},
        r"^local_training\.dp\.max_grad_norm: .*finite",
    ),
    (
        {"secure_aggregation": {}, "rounds": {"min_updates": 2}},
        r"privacy: .*secure_aggregation hides",
    ),
    (
        {"local_training": {"dp": DP_SGD, "max_grad_norm": 1.0}},
        r"^local_training: .*leave local_training\.max_grad_norm out",
    ),
    ({"local_training": {"dp": {**DP_SGD, "delta": 0}}}, r"^local_training\.dp\.delta: "),
    (
        {"local_training": {"dp": {**DP_SGD, "max_grad_norm": None}}},
        r"^local_training\.dp\.max_grad_norm: ",
    ),
    ({"local_training": {"dp": {**DP_SGD, "sigma": 1}}}, r"^local_training\.dp\.sigma: "),
    (
        {"local_training": {"dp": DP_SGD}, "method": {"name": "vpt"}},
        r"^local_training\.dp does not work with method\.name vpt: .*hooks",
    ),
]


@pytest.mark.parametrize(("changes", "message"), BAD)
def test_bad_privacy_settings_are_refused_in_one_line_naming_the_field(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_spec(**changes))
    text = str(err.value)
    assert "\n" not in text
    assert re.search(message, text), text


def test_client_dp_sgd_alone_and_with_secure_aggregation() -> None:
    spec = parse_spec(_spec(privacy=None, local_training={"dp": DP_SGD}))
    assert spec.local_training.dp is not None
    assert spec.local_training.dp.max_grad_norm == 1.0
    secure = parse_spec(
        _spec(
            privacy=None,
            local_training={"dp": DP_SGD},
            secure_aggregation={},
            rounds={"min_updates": 2},
        )
    )
    assert secure.local_training.dp is not None and secure.secure_aggregation is not None


def test_both_mechanisms_draw_their_noise_from_the_system_unless_the_spec_says_seeded() -> None:
    spec = parse_spec(_spec(local_training={"dp": DP_SGD}))
    assert spec.privacy is not None and spec.local_training.dp is not None
    assert (spec.privacy.noise_source, spec.local_training.dp.noise_source) == ("system", "system")
    seeded = parse_spec(
        _spec(
            privacy={"noise_source": "seeded"},
            local_training={"dp": {**DP_SGD, "noise_source": "seeded"}},
        )
    )
    assert seeded.privacy is not None and seeded.local_training.dp is not None
    assert (seeded.privacy.noise_source, seeded.local_training.dp.noise_source) == (
        "seeded",
        "seeded",
    )


@pytest.mark.parametrize("sigma", [0.8, 1.1, 3.0])
def test_epsilon_is_opacus_rdp_called_directly(sigma: float) -> None:
    rates = [1.0, 1.0, 0.5, 0.5, 0.25]
    direct = RDPAccountant()
    for q in rates:
        direct.step(noise_multiplier=sigma, sample_rate=q)
    assert epsilon(sigma, rates, 1e-5) == pytest.approx(direct.get_epsilon(delta=1e-5), rel=1e-12)
    # steps_each repeats every entry: a client's local DP-SGD steps over rounds
    direct = RDPAccountant()
    for _ in range(3 * 40):
        direct.step(noise_multiplier=sigma, sample_rate=0.1)
    got = epsilon(sigma, [0.1, 0.1, 0.1], 1e-5, steps_each=40)
    assert got == pytest.approx(direct.get_epsilon(delta=1e-5), rel=1e-12)


def test_epsilon_with_the_prv_accountant_and_for_no_step() -> None:
    direct = PRVAccountant()
    for _ in range(4):
        direct.step(noise_multiplier=1.0, sample_rate=0.5)
    assert epsilon(1.0, [0.5] * 4, 1e-5, "prv") == pytest.approx(
        direct.get_epsilon(delta=1e-5), rel=1e-9
    )
    assert epsilon(1.0, [], 1e-5) == 0.0
    # more rounds, more ε; more noise, less ε
    assert epsilon(1.0, [1.0] * 3, 1e-5) > epsilon(1.0, [1.0] * 2, 1e-5)
    assert epsilon(2.0, [1.0] * 3, 1e-5) < epsilon(1.0, [1.0] * 3, 1e-5)


def test_a_private_spec_survives_its_own_dump() -> None:
    """The service stores the spec as dumped JSON and parses it again on every read."""
    spec = parse_spec(_spec(local_training={"dp": DP_SGD}))
    assert spec.aggregation.weighting == "uniform"
    again = parse_spec(spec.model_dump(mode="json"))
    assert again == spec
