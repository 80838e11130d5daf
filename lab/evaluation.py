"""Held-out accuracy of a federation's global states, the way an outside observer sees them.

The reference model is built from the spec the server echoes, with the frozen
base downloaded from the server (fingerprint checked); each round's global
state is downloaded by version and scored on images no organisation holds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image

from client_sdk._client import FedTuneClient
from client_sdk.training import accuracy as top1_accuracy
from lab.datasets import LabeledImages
from shared.api import FederationInfo
from shared.blobs import read_state
from shared.tuning import BuiltModel, build

__all__ = ["EvalSet", "accuracy", "reference_model", "round_accuracies"]

EVAL_BATCH = 256
# Transformed held-out images are kept in memory up to this size (see EvalSet).
EVAL_CACHE_BYTES = 256 << 20


class EvalSet:
    """Held-out images transformed for one model once, so that scoring many states is cheap.

    The transformed batches are kept while they fit `budget` bytes; a larger set
    is transformed again on every pass.
    """

    def __init__(self, bm: BuiltModel, data: LabeledImages, budget: int = EVAL_CACHE_BYTES):
        self.data = data
        self.transform: Callable[[Image.Image], torch.Tensor] = bm.transform(False)
        size = bm.image_size
        fits = len(data) * 3 * size * size * 4 <= budget
        self._cached = list(self._transformed()) if fits else None

    def _transformed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.data), EVAL_BATCH):
            images = self.data.images[start : start + EVAL_BATCH]
            batch = torch.stack([self.transform(im) for im in images])
            yield batch, torch.tensor(self.data.labels[start : start + EVAL_BATCH])

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._cached) if self._cached is not None else self._transformed()

    def __len__(self) -> int:
        return len(self.data)


def accuracy(
    bm: BuiltModel, data: LabeledImages | EvalSet, device: torch.device | None = None
) -> float:
    """Top-1 accuracy of `bm` as it stands on `data` (batches sent to `device` if given)."""
    evalset = data if isinstance(data, EvalSet) else EvalSet(bm, data, budget=0)
    return top1_accuracy(bm.model, evalset.batches(), device)


def reference_model(admin: FedTuneClient, info: FederationInfo, scratch: Path) -> BuiltModel:
    """The federation's model, built here with the server's base; raises if they differ."""
    if info.base_available:
        base = admin.download_base(info.id, scratch / "base.safetensors")
        bm = build(info.spec, base_state=read_state(base.path))
    else:
        bm = build(info.spec)
    if bm.base_fingerprint() != info.base_fingerprint:
        raise RuntimeError(
            f"federation {info.id}: the reference model's base fingerprint differs from the server's"
        )
    return bm


def round_accuracies(
    admin: FedTuneClient,
    info: FederationInfo,
    test: LabeledImages,
    rounds: int,
    device: torch.device | None = None,
) -> list[float]:
    """Held-out accuracy of the global state after rounds 0 (initial) .. `rounds`."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        bm = reference_model(admin, info, scratch)
        if device is not None:
            bm.model.to(device)
        evalset = EvalSet(bm, test)
        scores = []
        for r in range(rounds + 1):
            state = admin.download_state(info.id, scratch / f"v{r}.safetensors", version=r)
            bm.load_trainable_state(read_state(state.path))
            scores.append(accuracy(bm, evalset, device))
    return scores
