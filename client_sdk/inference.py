"""The federated model, ready to use: the base with one global state loaded.

`fetch_federated_model` gets it from the aggregator the way a training client
does (the base from the work dir's cache or the server, its fingerprint
checked; the state checked against the manifest); `federated_model` builds it
from a spec, a trainable state and optionally a base, without any server, for
tests and the lab; `saved_final_model` from the `final/` directory a training
client writes when its federation completes. The final model of a federation is the global state of its
final version, once the federation completed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from client_sdk._client import FedTuneClient
from client_sdk._exceptions import UsageError
from client_sdk.sync import StateStore, prepare_model
from client_sdk.workdir import WorkDir
from shared.blobs import BlobError, read_header, read_state
from shared.spec import FederationSpec
from shared.tuning import BuiltModel, build

__all__ = [
    "FederatedModel",
    "UsageError",
    "federated_model",
    "fetch_federated_model",
    "parse_version",
    "saved_final_model",
]

_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class FederatedModel:
    """A federation's model with one global version loaded, in eval mode."""

    spec: FederationSpec
    built: BuiltModel
    version: str | None = None  # sha256 of the global state, where known
    round: int | None = None  # the round after which that state holds
    federation_id: str | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.spec.task.classes)


def federated_model(
    spec: FederationSpec,
    trainable_state: Mapping[str, torch.Tensor],
    base_state: Mapping[str, torch.Tensor] | None = None,
    *,
    version: str | None = None,
    round: int | None = None,
    federation_id: str | None = None,
) -> FederatedModel:
    """Build `spec`'s model (from `base_state`, else from `spec.model.pretrained`) and load
    `trainable_state` into it."""
    built = build(spec, base_state=base_state)
    built.load_trainable_state(trainable_state)
    built.model.eval()
    return FederatedModel(spec, built, version, round, federation_id)


def saved_final_model(final_dir: str | Path) -> FederatedModel:
    """The model a training client saved under `<work-dir>/final/` when its federation completed:
    `spec.json`, `trainable.safetensors` and, where the server served it, `base.safetensors`."""
    final = Path(final_dir)
    try:
        spec = FederationSpec.model_validate_json((final / "spec.json").read_text())
        trainable = final / "trainable.safetensors"
        meta = read_header(trainable).metadata
        state = read_state(trainable)
        base = final / "base.safetensors"
        base_state = read_state(base) if base.exists() else None
    except (OSError, ValueError, BlobError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{final} does not hold a saved final model: {reason}") from None
    return federated_model(
        spec,
        state,
        base_state,
        version=meta.get("global_version"),
        federation_id=meta.get("federation"),
    )


def parse_version(raw: str) -> str:
    """A `--version`: a round number (0 = the initial state) or a sha256 hex digest."""
    value = raw.strip().lower()
    if value.isdigit() or _SHA.fullmatch(value):
        return value
    raise UsageError(
        f"--version {raw!r}: expected a round number (0 = initial state) or a sha256 hex digest"
    )


def fetch_federated_model(
    client: FedTuneClient,
    federation_id: str,
    client_id: str,
    work_dir: Path,
    *,
    version: str | None = None,
    progress: bool = False,
) -> FederatedModel:
    """The federation's model at `version` (a round number or sha256), by default the final one.

    Without `version` a federation that has not completed is refused: its
    current state is not a final model (name a round to use it anyway).
    """
    info = client.get_federation(federation_id)
    if version is None and info.status != "completed":
        raise UsageError(
            f"federation {info.id} is not completed ({info.status}, round {info.current_round} "
            f"of {info.spec.rounds.total}); pass --version N to use the global state after "
            "round N (0 = initial)"
        )
    ref = parse_version(version) if version is not None else info.global_version
    workdir = WorkDir(work_dir, info.id, client_id)
    built = prepare_model(client, info, workdir, progress=progress)
    partial = workdir.root / "state" / ".download.partial"
    partial.parent.mkdir(parents=True, exist_ok=True)
    got = client.download_state(info.id, partial, version=ref, progress=progress)
    path = workdir.state_path(got.sha256)
    partial.replace(path)
    state = StateStore(client, info, workdir).hold(got.sha256)  # hashed as it downloaded
    built.load_trainable_state(state)
    built.model.eval()
    round_header = {k.lower(): v for k, v in got.headers.items()}.get("x-fedtune-round", "")
    return FederatedModel(
        info.spec,
        built,
        version=got.sha256,
        round=int(round_header) if round_header.isdigit() else None,
        federation_id=info.id,
    )
