"""Deltas as real safetensors blobs on disk, the way the service stores accepted updates."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from aggregator_service.aggregation.base import UpdateInput
from shared.blobs import DeltaMetadata

TensorLike = torch.Tensor | Sequence[float] | float
WriteDelta = Callable[..., UpdateInput]


def as_state(values: Mapping[str, TensorLike], dtype: torch.dtype = torch.float32) -> dict:
    """{'w': [1, 2]} -> {'w': tensor([1., 2.])} in `dtype`."""
    return {k: torch.as_tensor(v, dtype=dtype).clone() for k, v in values.items()}


@pytest.fixture
def write_delta(tmp_path: Path) -> WriteDelta:
    """write_delta(client_id, {'w': [..]}, num_examples=1, dtype=float32) -> UpdateInput."""

    def write(
        client_id: str,
        tensors: Mapping[str, TensorLike],
        num_examples: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> UpdateInput:
        path = tmp_path / "blobs" / f"{client_id}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = DeltaMetadata(
            federation="fed_test", round=1, base_version="0" * 64, num_examples=num_examples
        )
        save_file(as_state(tensors, dtype), str(path), metadata=meta.to_safetensors())
        return UpdateInput(client_id=client_id, path=path, num_examples=num_examples)

    return write
