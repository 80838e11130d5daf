"""Secure aggregation on the client: what `masked_words` refuses to mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client_sdk.secagg import SecureAggregationError, masked_words
from shared.spec import FederationSpec, load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _spec(**aggregation: Any) -> FederationSpec:
    data = load_spec(EXAMPLES / "tiny-clip-bias.yaml").model_dump(mode="json")
    data["aggregation"] = {"strategy": "fedavg", "weighting": "num_examples", **aggregation}
    data["secure_aggregation"] = {"scale_bits": 24}
    return FederationSpec.model_validate(data)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    "aggregation",
    [
        {"clip_norm": None},
        {"clip_norm": 1.0},
        {"clip_norm": None, "max_abs_value": 10.0},
        {"clip_norm": 1.0, "max_abs_value": 10.0},
    ],
    ids=["unbounded", "clipped", "max_abs", "clipped_and_max_abs"],
)
def test_a_non_finite_delta_is_refused_as_diverged_whatever_the_bounds(
    bad: float, aggregation: dict[str, Any]
) -> None:
    vector = np.array([0.01, bad, -0.02, 0.0])

    with pytest.raises(SecureAggregationError) as refused:
        masked_words(_spec(**aggregation), vector, num_examples=10, cohort_size=3)

    message = str(refused.value)
    assert "training diverged" in message and "not masked or sent" in message
    assert "\n" not in message


def test_a_finite_delta_within_the_bounds_is_encoded() -> None:
    vector = np.array([0.01, -0.02, 0.0])

    words = masked_words(_spec(clip_norm=None), vector, num_examples=1, cohort_size=3)

    assert words.shape == (3,) and words.dtype == np.uint64
