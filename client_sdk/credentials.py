"""The credentials file `fedtune-client register` writes and `train`/`status` read.

JSON with the server URL, client id, API key, federation id, organisation name
and optional CA path; created with mode 0600 because the API key is a secret.

A key rotation in progress leaves `<credentials>.rotation` beside it: the
Idempotency-Key of the rotation and the sha256 of the key it started from, written
before the request, so a rotation interrupted anywhere is finished by running it
again (the server replays the same new key to the old key and that Idempotency-Key).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from client_sdk._exceptions import FedTuneError
from shared.blobs import atomic_write_bytes

__all__ = [
    "Credentials",
    "CredentialsError",
    "default_credentials_path",
    "finish_rotation",
    "load",
    "pending_rotation",
    "rotation_path",
    "save",
]

ENV_CREDENTIALS = "FEDTUNE_CREDENTIALS"


class CredentialsError(FedTuneError):
    """A credentials file that is missing, unreadable or malformed."""


class Credentials(BaseModel):
    model_config = ConfigDict(extra="ignore")

    server: str = Field(description="Aggregator URL the client registered with.")
    client_id: str
    api_key: str = Field(description="Bearer token; a secret.")
    federation_id: str
    name: str = Field(description="Organisation name.")
    ca_cert: str | None = Field(default=None, description="PEM of a private CA, if any.")


def default_credentials_path() -> Path:
    """`$FEDTUNE_CREDENTIALS`, else `credentials.json` in the user's config dir."""
    env = os.environ.get(ENV_CREDENTIALS)
    if env:
        return Path(env)
    return Path(platformdirs.user_config_dir("fedtune")) / "credentials.json"


def save(creds: Credentials, path: Path) -> None:
    """Write atomically with mode 0600 from the start (the key never sits world-readable)."""
    atomic_write_bytes(path, (creds.model_dump_json(indent=2) + "\n").encode())


def load(path: Path) -> Credentials:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredentialsError(
            f"no credentials at {path}; run `fedtune-client register` first "
            "(or pass --credentials FILE)"
        ) from None
    except OSError as exc:
        raise CredentialsError(f"cannot read credentials {path}: {exc.strerror}") from None
    try:
        return Credentials.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        raise CredentialsError(
            f"credentials file {path} is not valid (re-run `fedtune-client register`)"
        ) from None


def rotation_path(path: Path) -> Path:
    """Where a key rotation of the credentials at `path` keeps its Idempotency-Key."""
    return path.with_name(path.name + ".rotation")


def _key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def pending_rotation(path: Path, creds: Credentials) -> str:
    """The Idempotency-Key of the rotation of `creds`' key: the one saved by an interrupted
    rotation from this same key, else a new one, saved (atomically, mode 0600) before use."""
    marker = rotation_path(path)
    digest = _key_digest(creds.api_key)
    try:
        saved = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if (
        isinstance(saved, dict)
        and saved.get("api_key_sha256") == digest
        and isinstance(saved.get("idempotency_key"), str)
    ):
        return str(saved["idempotency_key"])
    key = f"rotate-{uuid.uuid4().hex}"
    body = {"idempotency_key": key, "api_key_sha256": digest}
    atomic_write_bytes(marker, (json.dumps(body) + "\n").encode())
    return key


def finish_rotation(path: Path) -> None:
    """Forget the rotation in progress (its new key is saved in the credentials)."""
    rotation_path(path).unlink(missing_ok=True)
