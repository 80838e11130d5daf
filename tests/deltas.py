"""Well-formed deltas for a federation's manifest, as the bytes a client uploads."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from shared.api import FederationInfo
from shared.blobs import DeltaMetadata, encode_state


def make_delta(
    info: FederationInfo,
    rnd: int,
    base_version: str,
    num_examples: int = 10,
    fill: float | Callable[[str, torch.Size], torch.Tensor] = 0.01,
    metrics: Mapping[str, float] | None = None,
    federation: str | None = None,
) -> bytes:
    """A well-formed delta for `info`'s manifest; `fill` a constant or a tensor factory."""
    tensors = {}
    for name, t in info.manifest.items():
        shape = torch.Size(t.shape)
        if callable(fill):
            tensors[name] = fill(name, shape).to(torch.float32)
        else:
            tensors[name] = torch.full(shape, fill, dtype=torch.float32)
    meta = DeltaMetadata(
        federation=federation or info.id,
        round=rnd,
        base_version=base_version,
        num_examples=num_examples,
        metrics=dict(metrics or {}),
    )
    return encode_state(tensors, meta.to_safetensors())
