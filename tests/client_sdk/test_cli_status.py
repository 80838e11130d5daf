"""`fedtune-client status` says in one line what protects the organisation's updates."""

from __future__ import annotations

from typing import Any

import pytest

from client_sdk.cli import protections
from shared.spec import parse_spec
from tests.aggregator_service.conftest import tiny_spec

DP_SGD = {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "delta": 1e-5}
CENTRAL = {
    "mechanism": "central_gaussian",
    "clip_norm": 1.0,
    "noise_multiplier": 2.0,
    "delta": 1e-5,
    "max_epsilon": 8.0,
}


def _spec(**sections: Any) -> Any:
    spec = tiny_spec(quorum=3, min_updates=2)
    spec["aggregation"] = {"strategy": "fedavg", "clip_norm": 1.0}
    if "dp" in sections:
        spec["local_training"] = {**spec["local_training"], "dp": sections.pop("dp")}
    return parse_spec({**spec, **sections})


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({}, "none (the service sees each update)"),
        (
            {"secure_aggregation": {"neighbours": None}},
            "secure aggregation (SecAgg+, masks shared with every other client): the service "
            "sees only the masked sum",
        ),
        (
            {"secure_aggregation": {"neighbours": 4}, "dp": DP_SGD},
            "secure aggregation (SecAgg+, masks shared with 4 neighbours): the service sees "
            "only the masked sum; DP-SGD on each client (noise x1.1, per-example gradient "
            "norm 1, delta 1e-05)",
        ),
        (
            {"privacy": CENTRAL},
            "central DP (noise x2 on the mean, stops at epsilon 8, delta 1e-05)",
        ),
        (
            {"privacy": {**CENTRAL, "noise_source": "seeded"}},
            "central DP (noise x2 on the mean, stops at epsilon 8, delta 1e-05, SEEDED noise: "
            "whoever holds the spec can subtract it)",
        ),
        (
            {"dp": {**DP_SGD, "noise_source": "seeded"}},
            "DP-SGD on each client (noise x1.1, per-example gradient norm 1, delta 1e-05, "
            "SEEDED noise: whoever holds the spec can subtract it)",
        ),
    ],
)
def test_status_names_each_protection_the_spec_turns_on(
    sections: dict[str, Any], expected: str
) -> None:
    assert protections(_spec(**sections)) == expected
