"""The SDK never reports a metric the server would refuse: a non-finite or absurd one is
left out of the delta's metadata, with a warning."""

from __future__ import annotations

import logging
import math

import pytest

from client_sdk.training import reportable_metrics
from shared.blobs import DeltaMetadata


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e300])
def test_a_metric_the_server_would_refuse_is_left_out_with_a_warning(bad, caplog):
    caplog.set_level(logging.WARNING, logger="client_sdk")

    kept = reportable_metrics({"train_loss": bad, "train_accuracy": 0.75})

    assert kept == {"train_accuracy": 0.75}
    assert "train_loss" in caplog.text


def test_the_reported_metrics_read_back_as_the_server_reads_them():
    kept = reportable_metrics({"train_loss": math.nan, "val_accuracy": 0.5})
    meta = DeltaMetadata(
        federation="fed_a", round=1, base_version="0" * 64, num_examples=3, metrics=kept
    )

    assert DeltaMetadata.from_safetensors(meta.to_safetensors()).metrics == {"val_accuracy": 0.5}
