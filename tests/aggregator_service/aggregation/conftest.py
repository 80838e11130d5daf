"""Updates for the strategies, read through each `Deltas` implementation in turn.

`make_update(...)` describes one client's delta; `deltas(updates)` hands the
round to a strategy, in memory (`MemoryDeltas`) or as safetensors blobs on disk
the way the service stores accepted updates (`BlobDeltas`): every strategy
test runs over both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from aggregator_service.aggregation import BlobDeltas, Deltas, MemoryDeltas, UpdateInput
from shared.blobs import DeltaMetadata

TensorLike = torch.Tensor | Sequence[float] | float


@dataclass(frozen=True)
class Update:
    client_id: str
    tensors: dict[str, torch.Tensor]
    num_examples: int


def as_state(values: Mapping[str, TensorLike], dtype: torch.dtype = torch.float32) -> dict:
    """{'w': [1, 2]} -> {'w': tensor([1., 2.])} in `dtype`."""
    return {k: torch.as_tensor(v, dtype=dtype).clone() for k, v in values.items()}


@pytest.fixture
def make_update() -> Callable[..., Update]:
    """make_update(client_id, {'w': [..]}, num_examples=1, dtype=float32) -> Update."""

    def make(
        client_id: str,
        tensors: Mapping[str, TensorLike],
        num_examples: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> Update:
        return Update(client_id, as_state(tensors, dtype), num_examples)

    return make


def write_blob(root: Path, update: Update) -> UpdateInput:
    """The update as the service stores it: a safetensors blob with its metadata."""
    path = root / f"{update.client_id}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = DeltaMetadata(
        federation="fed_test", round=1, base_version="0" * 64, num_examples=update.num_examples
    )
    save_file(update.tensors, str(path), metadata=meta.to_safetensors())
    return UpdateInput(update.client_id, path, update.num_examples)


@pytest.fixture(params=["memory", "blobs"])
def deltas(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Sequence[Update]], Deltas]:
    """deltas([update, ...]) -> the round as a `MemoryDeltas` or a `BlobDeltas`."""

    def make(updates: Sequence[Update]) -> Deltas:
        if request.param == "memory":
            return MemoryDeltas((u.client_id, u.tensors, u.num_examples) for u in updates)
        root = tmp_path / f"blobs-{len(list(tmp_path.iterdir()))}"
        return BlobDeltas([write_blob(root, u) for u in updates])

    return make
