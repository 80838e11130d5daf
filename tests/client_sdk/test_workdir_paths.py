"""Server-sent ids and digests never become paths outside the work dir."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from client_sdk.workdir import WorkDir, WorkDirError
from shared.api import ClientRegistered, RoundStatus

DIGEST = "ab" * 32
BAD_NAMES = ["../escape", "..", ".hidden", "a/b", "a\\b", "/abs", "", "x" * 65, "a b", "é"]
BAD_DIGESTS = ["../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "a" * 63 + "/", ""]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_work_dir_refuses_an_unsafe_client_id(tmp_path, bad):
    with pytest.raises(WorkDirError):
        WorkDir(tmp_path / "w", "fed_x", bad)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_work_dir_refuses_an_unsafe_federation_id(tmp_path, bad):
    with pytest.raises(WorkDirError):
        WorkDir(tmp_path / "w", bad, "cli_x")


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_state_and_base_paths_refuse_anything_but_a_sha256(tmp_path, bad):
    wd = WorkDir(tmp_path / "w", "fed_x", "cli_x")
    with pytest.raises(WorkDirError):
        wd.state_path(bad)
    with pytest.raises(WorkDirError):
        wd.base_path(bad)


def test_safe_values_stay_inside_the_work_dir(tmp_path):
    wd = WorkDir(tmp_path / "w", "fed_3k9x2m", "cli_7h2k")
    for path in (wd.state_path(DIGEST), wd.base_path(DIGEST)):
        assert path.resolve().is_relative_to((tmp_path / "w").resolve())


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_registration_with_an_unsafe_client_id_does_not_parse(bad):
    with pytest.raises(ValidationError):
        ClientRegistered(client_id=bad, api_key="k", federation_id="fed_x", name="n")


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_a_round_with_an_unsafe_global_version_does_not_parse(bad):
    with pytest.raises(ValidationError):
        RoundStatus.model_validate(_round(global_version=bad))


def test_a_well_formed_round_parses():
    assert RoundStatus.model_validate(_round()).global_version == DIGEST


def _round(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "federation_id": "fed_x",
        "federation_status": "running",
        "round": 1,
        "total_rounds": 2,
        "status": "open",
        "global_version": DIGEST,
        "quorum": 1,
        "min_updates": 1,
        "received": 0,
        "submitted": False,
        "deadline_at": None,
        "revision": 1,
    }
    return base | over
