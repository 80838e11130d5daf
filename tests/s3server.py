"""A real S3-compatible server for the tests: moto's standalone `moto_server`, one process.

`start_moto()` runs it on 127.0.0.1 on a free port and waits until it answers;
`S3Server.env()` is the AWS environment that points a client (or a child
process) at it. When it cannot start, the caller skips with the reason.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from lab.local_federation import free_port

START_TIMEOUT_S = 60.0


@dataclass
class S3Server:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def env(self) -> dict[str, str]:
        """The AWS environment of a client of this server (fake credentials, no config files)."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_moto(log_path: Path) -> S3Server:
    """Start `moto_server`; raises RuntimeError with the reason when it does not answer."""
    try:
        import boto3  # noqa: F401  (the tests talk to it through boto3)
    except ImportError as exc:
        raise RuntimeError(f"boto3 is not installed: {exc}") from None
    script = Path(sys.executable).with_name("moto_server")
    if not script.exists():
        raise RuntimeError(f"moto_server is not installed beside {sys.executable}")
    port = free_port()
    log = log_path.open("ab")
    try:
        proc = subprocess.Popen(
            [str(script), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    finally:
        log.close()
    server = S3Server(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"moto_server exited with {proc.returncode}:\n{tail}")
        try:
            httpx.get(f"{server.url}/moto-api/", timeout=2)
            return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"moto_server did not answer on {server.url} within {START_TIMEOUT_S}s")


@contextlib.contextmanager
def bucket_server(log_path: Path, bucket: str) -> Iterator[S3Server]:
    """A running `moto_server` holding an empty `bucket`, stopped afterwards; the calling test
    is skipped, with the reason, when the server cannot start."""
    import pytest

    try:
        server = start_moto(log_path)
    except RuntimeError as exc:
        pytest.skip(f"no S3-compatible server: {exc}")
    try:
        server.create_bucket(bucket)
        yield server
    finally:
        server.stop()
