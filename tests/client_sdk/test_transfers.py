"""Downloads stream to disk checked against the ETag; 304 re-uses what is held; http needs opting in."""

from __future__ import annotations

import hashlib

import pytest

from client_sdk import (
    APIResponseValidationError,
    FedTuneClient,
    FedTuneError,
    InsecureTransportError,
)

BLOB = b"safetensors-ish bytes " * 5000
SHA = hashlib.sha256(BLOB).hexdigest()


def test_download_streams_to_dest_and_checks_the_etag(scripted, tmp_path):
    scripted.then(200, body=BLOB, headers={"ETag": f'"{SHA}"', "X-FedTune-Round": "3"})
    client = FedTuneClient(scripted.url, allow_http=True)

    result = client.download_state("fed_1", tmp_path / "s.safetensors", version=3)

    assert (result.sha256, result.size, result.not_modified) == (SHA, len(BLOB), False)
    assert (tmp_path / "s.safetensors").read_bytes() == BLOB
    assert scripted.seen[0].path == "/v1/federations/fed_1/state?version=3"
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


def test_download_with_if_none_match_returns_not_modified_on_304(scripted, tmp_path):
    scripted.then(304, headers={"ETag": f'"{SHA}"'})
    client = FedTuneClient(scripted.url, allow_http=True)

    result = client.download_state("fed_1", tmp_path / "s.safetensors", if_none_match=SHA)

    assert result.not_modified and result.sha256 == SHA
    assert scripted.seen[0].headers["If-None-Match"] == f'"{SHA}"'
    assert not (tmp_path / "s.safetensors").exists()


def test_download_whose_bytes_do_not_hash_to_the_etag_is_refused_and_removed(scripted, tmp_path):
    scripted.then(200, body=BLOB, headers={"ETag": '"' + "0" * 64 + '"'})
    client = FedTuneClient(scripted.url, allow_http=True)

    with pytest.raises(APIResponseValidationError, match="corrupted transfer"):
        client.download_base("fed_1", tmp_path / "b.safetensors")

    assert list(tmp_path.iterdir()) == []


def test_plain_http_is_refused_unless_allowed():
    with pytest.raises(InsecureTransportError, match="--insecure-http"):
        FedTuneClient("http://127.0.0.1:1")


def test_missing_ca_certificate_is_a_clear_error(tmp_path):
    with pytest.raises(FedTuneError, match="does not exist"):
        FedTuneClient("https://127.0.0.1:1", ca_cert=tmp_path / "nope.pem")


def test_unparseable_success_body_is_a_validation_error(scripted):
    scripted.then(200, {"status": "maybe"})
    client = FedTuneClient(scripted.url, allow_http=True)

    with pytest.raises(APIResponseValidationError, match="unexpected response body"):
        client.health()
