"""Well-formed deltas for a federation's manifest, as the bytes a client uploads."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from shared.api import FederationInfo
from shared.blobs import DeltaMetadata, encode_state

Fill = Callable[[str, torch.Size], torch.Tensor]


def random_fill(seed: int, scale: float = 0.01) -> Fill:
    """A tensor factory for `make_delta`: seeded normal draws times `scale`, per name."""

    def fill(name: str, shape: torch.Size) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 1000 + sum(map(ord, name)))
        return torch.randn(shape, generator=g) * scale

    return fill


def make_delta(
    info: FederationInfo,
    rnd: int,
    base_version: str,
    num_examples: int = 10,
    fill: float | Fill = 0.01,
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
