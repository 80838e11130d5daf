"""Service settings: one pydantic-settings class, every field also a `FEDTUNE_*` variable.

Routes never read the environment; `create_app(settings)` is handed one of these.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["MIN_ADMIN_TOKEN_CHARS", "Settings", "resolve_admin_token"]

log = logging.getLogger("fedtune.server")

# An operator-chosen admin token shorter than this is refused at start-up.
MIN_ADMIN_TOKEN_CHARS = 32


class Settings(BaseSettings):
    """How one aggregator process runs (flags of `fedtune-server serve`, or FEDTUNE_* env)."""

    model_config = SettingsConfigDict(env_prefix="FEDTUNE_", extra="ignore")

    data_dir: Path = Field(
        default=Path("fedtune-data"), description="SQLite database and blob store."
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite (WAL) in data_dir."
    )
    database_url_file: Path | None = Field(
        default=None,
        description="File holding the SQLAlchemy URL (first line), so its password stays "
        "out of the environment and the process list; database_url wins when both are set.",
    )
    ssl_certfile: Path | None = Field(default=None, description="TLS certificate chain (PEM).")
    ssl_keyfile: Path | None = Field(default=None, description="TLS private key (PEM).")
    admin_token: SecretStr | None = Field(default=None, description="Admin bearer token.")
    admin_token_file: Path | None = Field(
        default=None, description="File holding the admin token (first line)."
    )
    max_upload_mb: float = Field(default=1024, gt=0, description="Largest accepted update body.")
    upload_idle_s: float = Field(
        default=30.0,
        gt=0,
        description="An upload body that sends nothing for this long is dropped.",
    )
    upload_min_kib_s: float = Field(
        default=16.0,
        ge=0,
        description="After its first 10 s, an upload body arriving slower than this on average "
        "(KiB/s) is dropped: a trickle cannot hold a socket and a temp file for ever.",
    )
    max_num_examples: int = Field(
        default=100_000_000, ge=1, description="Largest num_examples an update may claim."
    )
    lease_s: float = Field(
        default=15.0,
        gt=0,
        description="A round's aggregation is leased for this long and renewed by heartbeat; a "
        "replica that dies is replaced by another within it.",
    )
    deadline_check_s: float = Field(
        default=0.5,
        gt=0,
        description="How often the sweeper checks deadlines, quorums and expired leases.",
    )
    poll_recheck_s: float = Field(
        default=0.5,
        gt=0,
        description="How often one watcher per federation re-reads its round's revision while "
        "long-polls wait (SQLite; it sees other processes' changes). With PostgreSQL, changes "
        "arrive by LISTEN/NOTIFY and the re-check is a slower safety net.",
    )
    max_json_kb: float = Field(
        default=64, gt=0, description="Largest JSON request body (the update upload aside)."
    )
    max_header_kb: float = Field(
        default=16, gt=0, description="Largest request line plus headers (431 past it)."
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="A request's line and headers must arrive within this."
    )
    keep_alive_s: float = Field(
        default=5.0, gt=0, description="An idle kept-alive connection is closed after this."
    )
    shutdown_timeout_s: int = Field(
        default=30,
        ge=1,
        description="On SIGTERM, held long-polls answer at once and other requests still "
        "running after this (an upload, a download) are cut off. Keep it below the "
        "orchestrator's grace period (Kubernetes terminationGracePeriodSeconds).",
    )
    limit_concurrency: int = Field(
        default=4096, ge=1, description="Connections plus running requests past this answer 503."
    )
    max_connections: int = Field(
        default=4096, ge=1, description="Connections past this are closed as they open."
    )
    max_polls_per_client: int = Field(
        default=4, ge=1, description="Concurrent long-polls one API key may hold (429 past it)."
    )
    max_uploads_per_client: int = Field(
        default=2, ge=1, description="Concurrent uploads one API key may send (429 past it)."
    )
    busy_retry_after_s: int = Field(
        default=2, ge=1, description="Retry-After (seconds) sent with a per-client 429."
    )
    insecure_http: bool = Field(
        default=False,
        description="Serve plain HTTP on a non-loopback address (behind a TLS-terminating proxy).",
    )
    docs: bool = Field(
        default=True, description="Serve /docs (Swagger UI from local assets) and /openapi.json."
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="Bearer token for /metrics (the admin token works too)."
    )
    metrics_token_file: Path | None = Field(
        default=None, description="File holding the /metrics bearer token (first line)."
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address of the separate metrics listener."
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve /metrics without a token on this separate port (e.g. for a scraper "
        "inside the cluster); unset: /metrics only on the main port, behind a token.",
    )
    blob_url: str | None = Field(
        default=None,
        description="Where blobs live: unset for data_dir/blobs, or s3://bucket/prefix for an "
        "S3-compatible store (endpoint, region and credentials from the standard AWS_* "
        "environment variables).",
    )
    presign_downloads: bool = Field(
        default=True,
        description="With an S3 store, answer state and base downloads with a redirect to a "
        "short-lived presigned URL instead of streaming them through the service.",
    )
    log_level: str = Field(default="info", description="uvicorn log level.")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_json_bytes(self) -> int:
        return int(self.max_json_kb * 1024)

    @property
    def max_header_bytes(self) -> int:
        return int(self.max_header_kb * 1024)

    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'fedtune.db'}"

    @field_validator("admin_token")
    @classmethod
    def _admin_token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"the admin token must be at least {MIN_ADMIN_TOKEN_CHARS} characters "
                "(e.g. 32 random bytes in URL-safe base64)"
            )
        return value

    @model_validator(mode="after")
    def _read_database_url_file(self) -> Settings:
        if self.database_url or self.database_url_file is None:
            return self
        try:
            lines = self.database_url_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(
                f"cannot read database_url_file {self.database_url_file}: {exc.strerror}"
            ) from None
        if not lines or not lines[0].strip():
            raise ValueError(f"database_url_file {self.database_url_file} is empty")
        self.database_url = lines[0].strip()
        return self


def resolve_admin_token(settings: Settings) -> str:
    """The admin token: from the settings, from its file, or generated into data_dir (0600).

    A token file (`admin_token_file`, or the generated `data_dir/admin-token`) may list
    several tokens, one per non-empty line, all valid (rotation without downtime: see
    `services.context.AdminTokens`); the first is returned. Every token from the settings or
    a file must have `MIN_ADMIN_TOKEN_CHARS` characters (`ValueError` otherwise).
    """
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value().strip()
    path = settings.admin_token_file
    if path is None:
        path = settings.data_dir / "admin-token"
        if not path.exists():
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            token = "fta_" + secrets.token_urlsafe(32)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process generated it first
                pass
            else:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(token + "\n")
                log.warning("generated an admin token into %s (mode 0600)", path)
                return token
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read admin token file {path}: {exc.strerror}") from None
    tokens = [line.strip() for line in text.splitlines() if line.strip()]
    if not tokens:
        raise ValueError(f"admin token file {path} is empty")
    for number, token in enumerate(tokens, 1):
        if len(token) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"admin token file {path}: the token on non-empty line {number} is shorter "
                f"than {MIN_ADMIN_TOKEN_CHARS} characters"
            )
    return tokens[0]
