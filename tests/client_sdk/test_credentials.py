"""Credentials are private (0600) and a missing or broken file says what to do."""

from __future__ import annotations

import stat

import pytest

from client_sdk.credentials import Credentials, CredentialsError, load, save


def test_saved_credentials_are_mode_0600_and_load_back(tmp_path):
    creds = Credentials(
        server="https://agg:8443",
        client_id="cli_1",
        api_key="ftk_x",
        federation_id="fed_1",
        name="org-a",
        ca_cert=None,
    )
    path = tmp_path / "cfg" / "credentials.json"

    save(creds, path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path) == creds


@pytest.mark.parametrize(
    ("content", "message"), [(None, "run `fedtune-client register`"), ("{not json", "not valid")]
)
def test_missing_or_malformed_credentials_explain_what_to_do(tmp_path, content, message):
    path = tmp_path / "credentials.json"
    if content is not None:
        path.write_text(content)

    with pytest.raises(CredentialsError, match=message):
        load(path)
