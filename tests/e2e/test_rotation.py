"""Rotation against a real `fedtune-server serve` process: client API keys (SDK, raw HTTP and
`fedtune-client rotate-key`), enrollment tokens listed and revoked, and the refusal of the
wrong caller for each."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from client_sdk import FedTuneClient
from client_sdk import credentials as creds_mod
from client_sdk.credentials import Credentials
from lab.local_federation import ServerProcess, client_command, quiet_env, start_server
from shared.spec import RoundsSpec, load_spec

pytestmark = [pytest.mark.e2e]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class Env:
    server: ServerProcess
    fid: str
    root: Path

    def register(self, name: str) -> Credentials:
        token = self.server.admin().create_enrollment_token(self.fid).token
        with FedTuneClient(self.server.url, allow_http=True) as client:
            reg = client.register_client(token, name)
        return Credentials(server=self.server.url, **reg.model_dump())

    def http(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=60)

    def works(self, key: str) -> bool:
        """Whether `key` authenticates (a member-only read of its federation)."""
        with self.http(key) as c:
            status = c.get(f"/v1/federations/{self.fid}").status_code
        assert status in (200, 401), status
        return status == 200


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("rotation")
    server = start_server(root / "server")
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    spec = spec.model_copy(update={"rounds": RoundsSpec(total=1, quorum=3, min_updates=3)})
    info = server.admin().create_federation(spec)
    yield Env(server, info.id, root)
    server.stop()


def _rotate(env: Env, key: str, cid: str, idempotency_key: str) -> httpx.Response:
    with env.http(key) as c:
        return c.post(f"/v1/clients/{cid}/key", headers={"Idempotency-Key": idempotency_key})


# -- client API keys ------------------------------------------------------------


def test_old_key_works_until_the_new_key_is_first_used(env):
    creds = env.register("org-grace")

    with FedTuneClient(env.server.url, api_key=creds.api_key, allow_http=True) as client:
        rotated = client.rotate_key(creds.client_id)
        assert client.api_key == rotated.api_key

    assert rotated.api_key.startswith("ftk_") and rotated.api_key != creds.api_key
    assert rotated.previous_key_valid_until is not None
    assert env.works(creds.api_key)  # the answer may not have reached the client yet
    assert env.works(rotated.api_key)  # first use of the new key ...
    assert not env.works(creds.api_key)  # ... ends the old one


def test_lost_answer_is_replayed_to_the_old_key_with_the_same_idempotency_key(env):
    creds = env.register("org-lost-answer")
    idem = str(uuid.uuid4())

    first = _rotate(env, creds.api_key, creds.client_id, idem)  # pretend this answer was lost
    again = _rotate(env, creds.api_key, creds.client_id, idem)

    assert first.status_code == again.status_code == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["api_key"] == first.json()["api_key"]
    assert env.works(first.json()["api_key"])
    retired = _rotate(env, creds.api_key, creds.client_id, idem)
    assert retired.status_code == 401, retired.text


def test_a_client_cannot_rotate_another_clients_key(env):
    victim = env.register("org-victim")
    attacker = env.register("org-attacker")

    r = _rotate(env, attacker.api_key, victim.client_id, str(uuid.uuid4()))

    assert r.status_code == 403, r.text
    assert r.json()["error"] and "own" in r.json()["detail"]
    assert env.works(victim.api_key) and env.works(attacker.api_key)


@pytest.mark.parametrize("key", [None, "ftk_not-a-real-key"])
def test_rotation_needs_a_valid_key(env, key):
    creds = env.register(f"org-unauthenticated-{key is None}")

    with env.http(key) as c:
        r = c.post(f"/v1/clients/{creds.client_id}/key")

    assert r.status_code == 401, r.text
    assert env.works(creds.api_key)


def test_the_admins_rotation_ends_the_old_key_at_once(env):
    creds = env.register("org-admin-rotated")

    with env.server.admin() as admin:
        rotated = admin.rotate_key(creds.client_id)
        assert admin.api_key == env.server.admin_token  # the admin keeps its own token

    assert rotated.previous_key_valid_until is None
    assert not env.works(creds.api_key)
    assert env.works(rotated.api_key)


def test_a_revoked_clients_key_cannot_be_rotated(env):
    creds = env.register("org-revoked")
    with env.server.admin() as admin:
        admin.revoke_client(creds.client_id)

    assert _rotate(env, creds.api_key, creds.client_id, "k").status_code == 401
    with env.server.http() as admin_http:
        r = admin_http.post(f"/v1/clients/{creds.client_id}/key")
    assert r.status_code == 403, r.text


# -- fedtune-client rotate-key ---------------------------------------------------


def _cli_rotate(env: Env, path: Path) -> subprocess.CompletedProcess[str]:
    cmd = client_command("rotate-key", "--credentials", str(path), "--insecure-http")
    return subprocess.run(cmd, env=quiet_env(), capture_output=True, text=True, timeout=120)


def test_rotate_key_command_rewrites_the_credentials_and_ends_the_old_key(env):
    creds = env.register("org-cli")
    path = env.root / "org-cli.json"
    creds_mod.save(creds, path)

    done = _cli_rotate(env, path)

    assert done.returncode == 0, done.stderr
    saved = creds_mod.load(path)
    assert saved.api_key != creds.api_key
    assert saved.model_dump(exclude={"api_key"}) == creds.model_dump(exclude={"api_key"})
    assert path.stat().st_mode & 0o777 == 0o600
    assert not creds_mod.rotation_path(path).exists()
    assert env.works(saved.api_key)
    assert not env.works(creds.api_key)


def test_rotate_key_after_a_crash_before_saving_gets_the_same_new_key(env):
    creds = env.register("org-crash")
    path = env.root / "org-crash.json"
    creds_mod.save(creds, path)
    # a first run saved its Idempotency-Key, the server rotated, then the client died
    idem = creds_mod.pending_rotation(path, creds)
    lost = _rotate(env, creds.api_key, creds.client_id, idem).json()["api_key"]

    done = _cli_rotate(env, path)

    assert done.returncode == 0, done.stderr
    assert creds_mod.load(path).api_key == lost
    assert not creds_mod.rotation_path(path).exists()
    assert not env.works(creds.api_key)


def test_rotate_key_with_a_refused_key_is_one_line(env):
    creds = env.register("org-cli-revoked")
    path = env.root / "org-cli-revoked.json"
    creds_mod.save(creds, path)
    with env.server.admin() as admin:
        admin.revoke_client(creds.client_id)

    done = _cli_rotate(env, path)

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "revoked" in done.stderr
    assert creds_mod.load(path).api_key == creds.api_key


# -- enrollment tokens -------------------------------------------------------------


def test_enrollment_tokens_are_listed_by_id_without_the_secret(env):
    with env.server.admin() as admin:
        issued = admin.create_enrollment_token(env.fid, uses=3)
        listed = admin.list_enrollment_tokens(env.fid)
    with env.server.http() as admin_http:
        raw = admin_http.get(f"/v1/federations/{env.fid}/enrollment-tokens").text

    mine = [t for t in listed if t.id == issued.id]
    assert len(mine) == 1
    assert (mine[0].uses_left, mine[0].revoked) == (3, False)
    assert mine[0].expires_at == issued.expires_at
    assert issued.token not in raw and "token_hash" not in raw
    assert set(json.loads(raw)[0]) == {
        *("id", "federation_id", "uses_left", "expires_at", "created_at", "revoked"),
    }


def test_a_revoked_enrollment_token_cannot_register(env):
    with env.server.admin() as admin:
        issued = admin.create_enrollment_token(env.fid, uses=5)
        revoked = admin.revoke_enrollment_token(env.fid, issued.id)
        again = admin.revoke_enrollment_token(env.fid, issued.id)

    with env.http(None) as anyone:
        r = anyone.post("/v1/clients", json={"enrollment_token": issued.token, "name": "late"})

    assert revoked.revoked and revoked.uses_left == 0
    assert again == revoked
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "enrollment_invalid" and "revoked" in r.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/federations/{fid}/enrollment-tokens"),
        ("DELETE", "/v1/federations/{fid}/enrollment-tokens/{tid}"),
    ],
)
def test_a_client_cannot_list_or_revoke_enrollment_tokens(env, method, path):
    creds = env.register(f"org-nosy-{method.lower()}")
    with env.server.admin() as admin:
        issued = admin.create_enrollment_token(env.fid)

    with env.http(creds.api_key) as c:
        r = c.request(method, path.format(fid=env.fid, tid=issued.id))

    assert r.status_code == 403, r.text
    with env.server.admin() as admin:
        assert not next(
            t for t in admin.list_enrollment_tokens(env.fid) if t.id == issued.id
        ).revoked


@pytest.mark.parametrize(("tid", "status"), [("0123456789abcdef", 404), ("not-an-id", 422)])
def test_revoking_an_unknown_or_malformed_token_id_is_refused(env, tid, status):
    with env.server.http() as admin_http:
        r = admin_http.delete(f"/v1/federations/{env.fid}/enrollment-tokens/{tid}")
    assert r.status_code == status, r.text


def test_enrollment_tokens_of_an_unknown_federation_are_not_found(env):
    with env.server.http() as admin_http:
        assert admin_http.get("/v1/federations/fed_nope/enrollment-tokens").status_code == 404
