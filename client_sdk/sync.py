"""Getting the same model as the federation: the frozen base and the global states.

The base comes from the server (`base_source: server`, cached by fingerprint)
or is built locally; either way its fingerprint must equal the federation's.
Global states are cached by sha256 and re-downloaded only when the version
changed. Received files are read through FedTune's safetensors codec, which
checks the header before any tensor is touched; names and shapes are then
checked against the federation's manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from client_sdk._client import FedTuneClient
from client_sdk._exceptions import FedTuneError
from client_sdk.workdir import WorkDir
from shared.api import FederationInfo
from shared.blobs import BlobError, read_state, sha256_file
from shared.tuning import BuiltModel, build

__all__ = ["ModelMismatchError", "StateStore", "prepare_model"]

log = logging.getLogger("client_sdk")


class ModelMismatchError(FedTuneError):
    """The locally built model is not the federation's (fingerprint or manifest differs)."""


def _load_checked(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return read_state(path)
    except (BlobError, OSError, RuntimeError, ValueError) as exc:
        raise FedTuneError(f"{what} at {path} is not a valid safetensors file: {exc}") from None


def prepare_model(
    client: FedTuneClient, info: FederationInfo, workdir: WorkDir, *, progress: bool
) -> BuiltModel:
    """Build the federation's model and check its base fingerprint and manifest."""
    spec = info.spec
    cached: Path | None = None
    try:
        if spec.model.base_source == "server":
            cached = workdir.base_path(info.base_fingerprint)
            if not cached.exists():
                log.info("downloading the frozen base model")
                client.download_base(info.id, cached, progress=progress)
            bm = build(spec, base_state=_load_checked(cached, "base model"))
        else:
            bm = build(spec)
    except (ValueError, KeyError, RuntimeError) as exc:
        if cached is not None:
            cached.unlink(missing_ok=True)
        raise ModelMismatchError(
            f"cannot build the federation's model from its base: {exc}"
        ) from None
    fingerprint = bm.base_fingerprint()
    if fingerprint != info.base_fingerprint:
        if cached is not None:
            cached.unlink(missing_ok=True)
        raise ModelMismatchError(
            f"base model fingerprint {fingerprint[:12]}… differs from the federation's "
            f"{info.base_fingerprint[:12]}…; this client's model weights are not the ones "
            "the federation was created with"
        )
    manifest = {k: v.model_dump() for k, v in bm.manifest().items()}
    if manifest != {k: v.model_dump() for k, v in info.manifest.items()}:
        raise ModelMismatchError(
            "the trainable tensors built here differ from the federation's manifest "
            "(different FedTune version?)"
        )
    return bm


class StateStore:
    """The global state this client holds, by sha256, kept on disk and in memory."""

    def __init__(self, client: FedTuneClient, info: FederationInfo, workdir: WorkDir) -> None:
        self.client, self.info, self.workdir = client, info, workdir
        self.version: str | None = None
        self.state: dict[str, torch.Tensor] = {}

    def get(self, version: str, *, progress: bool) -> dict[str, torch.Tensor]:
        """The global state `version`, downloaded only when not already held."""
        if version == self.version:
            return self.state
        path = self.workdir.state_path(version)
        if not (path.exists() and sha256_file(path) == version):
            result = self.client.download_state(
                self.info.id, path, version=version, progress=progress
            )
            if result.sha256 != version:
                path.unlink(missing_ok=True)
                raise FedTuneError(
                    f"server sent global state {result.sha256[:12]}… for version {version[:12]}…"
                )
        return self.hold(version)

    def hold(self, version: str) -> dict[str, torch.Tensor]:
        """Load and hold `version` from its file in the work dir (its sha256 already checked)."""
        state = _load_checked(self.workdir.state_path(version), "global state")
        self._check_manifest(state)
        if self.version is not None and self.version != version:
            self.workdir.state_path(self.version).unlink(missing_ok=True)
        self.version, self.state = version, state
        return state

    def _check_manifest(self, state: dict[str, torch.Tensor]) -> None:
        manifest = self.info.manifest
        if set(state) != set(manifest) or any(
            list(state[k].shape) != manifest[k].shape for k in manifest
        ):
            raise FedTuneError("global state from the server does not match the manifest")
