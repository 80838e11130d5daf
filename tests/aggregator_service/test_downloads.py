"""State and base downloads: ETag = sha256, If-None-Match -> 304, `?version=` history."""

from __future__ import annotations

import hashlib

import pytest


@pytest.fixture(scope="module")
def fed(start_module_app, new_federation, spec_with):
    return new_federation(start_module_app(), spec_with(), 1)


def test_state_etag_is_its_sha256_and_matching_if_none_match_gives_304(fed):
    with fed.app.client() as c:
        r = c.get(f"/v1/federations/{fed.id}/state")
        digest = hashlib.sha256(r.content).hexdigest()
        quoted = c.get(f"/v1/federations/{fed.id}/state", headers={"If-None-Match": f'"{digest}"'})
        bare = c.get(f"/v1/federations/{fed.id}/state", headers={"If-None-Match": digest})
        other = c.get(f"/v1/federations/{fed.id}/state", headers={"If-None-Match": '"abc"'})

    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert r.headers["etag"] == f'"{digest}"' and digest == fed.info.global_version
    assert r.headers["x-fedtune-round"] == "0"
    assert quoted.status_code == 304 and quoted.content == b""
    assert quoted.headers["etag"] == f'"{digest}"'
    assert bare.status_code == 304
    assert other.status_code == 200 and other.content == r.content


@pytest.mark.parametrize(
    ("version", "status"),
    [("0", 200), ("{v0}", 200), ("7", 404), ("ab" * 32, 404), ("latest", 422)],
)
def test_state_version_selects_history_or_says_what_is_wrong(fed, version, status):
    with fed.app.client() as c:
        r = c.get(
            f"/v1/federations/{fed.id}/state",
            params={"version": version.format(v0=fed.info.global_version)},
        )

    assert r.status_code == status, r.text
    if status == 200:
        assert r.headers["etag"] == f'"{fed.info.global_version}"'
    else:
        assert r.json()["error"] == {404: "not_found", 422: "validation_error"}[status]


def test_base_download_carries_fingerprint_and_honours_if_none_match(fed):
    with fed.app.client() as c:
        r = c.get(f"/v1/federations/{fed.id}/base")
        etag = r.headers["etag"]
        again = c.get(f"/v1/federations/{fed.id}/base", headers={"If-None-Match": etag})

    assert r.status_code == 200
    assert etag == f'"{hashlib.sha256(r.content).hexdigest()}"'
    assert r.headers["x-fedtune-base-fingerprint"] == fed.info.base_fingerprint
    assert again.status_code == 304


def test_served_bytes_are_counted_for_the_open_round(fed):
    with fed.app.client() as c:
        before = c.get(f"/v1/federations/{fed.id}/rounds").json()[0]["bytes_out"]
        size = len(c.get(f"/v1/federations/{fed.id}/state").content)
        after = c.get(f"/v1/federations/{fed.id}/rounds").json()[0]["bytes_out"]

    assert after - before == size
