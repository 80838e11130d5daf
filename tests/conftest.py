"""Test-wide settings (never reach a model hub) and a TLS certificate for 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(server cert chain, server key, CA cert) from a trustme CA, for 127.0.0.1."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    issued.private_key_pem.write_to_path(str(d / "key.pem"))
    with (d / "cert.pem").open("wb") as f:
        for blob in issued.cert_chain_pems:
            f.write(blob.bytes())
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return d / "cert.pem", d / "key.pem", d / "ca.pem"
