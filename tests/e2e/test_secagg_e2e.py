"""Secure aggregation through a real server process and real `fedtune-client train` processes.

The service stores only masked inputs (uncorrelated with each client's plain delta, which the
client keeps in its work dir), and the aggregate it publishes equals plain FedAvg of the same
deltas within the fixed-point error: each coordinate of the mean is off by at most
2^-(scale_bits+1) (3e-8 at the default 24 bits), plus float32 rounding of the stored state.
Clients that drop out (driven through the SDK's own protocol steps, stopping at a chosen one)
and a tampered share are handled as the protocol says, and a process too late for one
attempt's cohort takes part in the next, even when restarted in between.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from client_sdk import FedTuneClient
from client_sdk.credentials import load
from client_sdk.secagg import SecureRound
from lab.local_federation import (
    ClientProcess,
    ServerProcess,
    register,
    start_client,
    train_args,
)
from shared.api import FederationInfo
from shared.blobs import Blob, atomic_save_state, read_state
from shared.spec import FederationSpec, load_spec
from tests.e2e.test_federation_e2e import EXAMPLES
from tests.images import write_image_folder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCALE_BITS = 24


def _spec(quorum: int, min_updates: int, **secure: Any) -> FederationSpec:
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    data = spec.model_dump(mode="json")
    data["local_training"].update({"epochs": 1, "batch_size": 8, "max_steps": 2})
    data["rounds"] = {"total": 1, "quorum": quorum, "min_updates": min_updates, "deadline_s": 600}
    data["aggregation"] = {"strategy": "fedavg", "weighting": "num_examples", "clip_norm": None}
    data["secure_aggregation"] = {"scale_bits": SCALE_BITS, **secure}
    return FederationSpec.model_validate(data)


def _client(server: ServerProcess, creds: Path) -> FedTuneClient:
    return FedTuneClient(server.url, api_key=load(creds).api_key, allow_http=True)


def _org(server: ServerProcess, info: FederationInfo, tmp: Path, org: str, seed: int) -> Path:
    creds = tmp / org / "credentials.json"
    register(server, server.admin().create_enrollment_token(info.id).token, org, creds)
    write_image_folder(tmp / org / "data", info.spec.task.classes, 3, seed=seed)
    return creds


def _flat(state: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([state[k].double().reshape(-1).numpy() for k in sorted(state)])


@contextmanager
def _reaped(procs: list[Any]) -> Iterator[None]:
    """Kill whichever client processes still run when the block ends (a failed assertion)."""
    try:
        yield
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()


def _train(server: ServerProcess, tmp: Path, orgs: list[str]) -> list[Any]:
    procs = []
    for org in orgs:
        args = train_args(
            server, tmp / org / "credentials.json", tmp / org / "data", tmp / org / "w"
        )
        procs.append(start_client(org, args, tmp / org / "client.log"))
    return procs


def _plain_delta(tmp: Path, org: str, number: int) -> tuple[np.ndarray, int]:
    """A client's plain delta of round `number`, as its work dir keeps it."""
    path = tmp / org / "w" / f"round-{number}.delta.safetensors"
    blob = Blob.open(path)
    try:
        n = int(blob.metadata["num_examples"])
    finally:
        blob.close()
    return _flat(read_state(path)), n


def _global(admin: FedTuneClient, info: FederationInfo, version: str, dest: Path) -> np.ndarray:
    path = dest / f"{version}.safetensors"
    admin.download_state(info.id, path, version=version)
    return _flat(read_state(path))


class Victim:
    """A fourth organisation driven through the SDK's own protocol steps (client_sdk.secagg)
    in this process, so that it stops exactly where a round needs it to: the service sees
    a client that dropped out, or one whose share was altered on its way."""

    def __init__(self, server: ServerProcess, info: FederationInfo, tmp: Path) -> None:
        creds = _org(server, info, tmp, "org-v", seed=9)
        self.id = load(creds).client_id
        self.client = _client(server, creds)
        self.round = SecureRound(self.client, info.spec, info.id, self.id, tmp / "org-v" / "w")
        self.info, self.tmp = info, tmp

    def _wait(self, number: int, phases: tuple[str, ...]) -> Any:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = self.client.current_round(self.info.id)
            if status.round == number and status.status == "open":
                st = self.round.state(number)
                if st.phase in phases:
                    return st
            time.sleep(0.2)
        raise AssertionError(f"round {number} never reached {phases}")

    def delta(self, number: int) -> Path:
        gen = torch.Generator().manual_seed(number)
        state = {
            name: torch.randn(t.shape, generator=gen) * 1e-3
            for name, t in self.info.manifest.items()
        }
        path = self.tmp / "org-v" / f"delta-{number}.safetensors"
        atomic_save_state(path, state, {"metrics": "{}"})
        return path

    def play(self, number: int, stop_after: str) -> None:
        st = self._wait(number, ("advertise",))
        self.round.advertise(number, st.attempt)
        st = self._wait(number, ("share",))
        body = self.round.share_body(number, st)
        if stop_after == "tampered share":
            first = body.shares[0]
            flipped = first.ciphertext[:-2] + ("00" if first.ciphertext[-2:] != "00" else "01")
            tampered = [first.model_copy(update={"ciphertext": flipped}), *body.shares[1:]]
            body = body.model_copy(update={"shares": tampered})
            self.tampered_for = first.recipient
        self.round._post(number, "/shares", body)
        if stop_after != "masked input":
            return  # gone before its masked input
        st = self._wait(number, ("input",))
        self.round.received(number, st)
        path = self.round.masked_input(number, st, self.delta(number), 5)
        self.round.upload_masked(number, st.attempt, path)  # and gone before unmasking


def test_secure_rounds_complete_through_dropouts_and_name_a_tampered_share(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Three `fedtune-client train` processes and a fourth client that, in round 1, drops out
    after its masked input; in round 2, after sharing its keys; in round 3 sends one neighbour
    a tampered share. Every round completes; round 3's aggregate is plain FedAvg of the three
    processes' deltas and the tampering is named in the history."""
    admin = server.admin()
    spec = _spec(quorum=4, min_updates=2, masked_input_s=20, unmask_s=4)
    spec = spec.model_copy(update={"rounds": spec.rounds.model_copy(update={"total": 3})})
    info = admin.create_federation(spec)
    orgs = ["org-a", "org-b", "org-c"]
    for i, org in enumerate(orgs):
        _org(server, info, tmp_path, org, seed=i)
    victim = Victim(server, info, tmp_path)

    procs = _train(server, tmp_path, orgs)
    with _reaped(procs):
        victim.play(1, "masked input")
        victim.play(2, "shared keys")
        victim.play(3, "tampered share")
        codes = [p.wait(timeout=600) for p in procs]

    assert codes == [0, 0, 0], "\n".join(p.output()[-3000:] for p in procs)
    r1, r2, r3 = admin.list_rounds(info.id)
    # round 1: its masked input counts although it never helped unmask
    assert r1.status == "closed" and r1.participant_count == 4 and r1.excluded == {}
    # round 2: dropped before its masked input; its masks were removed with its rebuilt key
    assert r2.status == "closed" and r2.participant_count == 3
    assert "dropped out" in r2.excluded[victim.id]
    # round 3: the recipient of the tampered share named its sender, which was left out
    assert r3.status == "closed" and r3.participant_count == 3
    assert "failed authentication" in r3.excluded[victim.id]
    events = victim.round.state(3).events
    assert any(
        f"the share {victim.id} sent to {victim.tampered_for} failed AES-GCM" in e for e in events
    ), events
    _check_masked_and_fedavg(server, admin, info, r3, tmp_path, orgs)


def _check_masked_and_fedavg(
    server: ServerProcess,
    admin: FedTuneClient,
    info: FederationInfo,
    record: Any,
    tmp: Path,
    orgs: list[str],
) -> None:
    plain = {org: _plain_delta(tmp, org, record.round) for org in orgs}
    ids = {load(tmp / org / "credentials.json").client_id: org for org in orgs}
    # what the service stored for each client is masked: no trace of the plain delta (with a
    # few hundred parameters, 0.05 is within chance: the bound is 4.5 standard errors)
    for p in record.participants:
        stored = read_state(_blob_path(server, p.sha256))
        words = _flat(stored)
        assert all(t.dtype == torch.int64 for t in stored.values())
        r = np.corrcoef(words, plain[ids[p.client_id]][0])[0, 1]
        assert abs(r) < max(0.05, 4.5 / np.sqrt(words.size)), (r, words.size)
    # the new global state is the old one plus the example-weighted mean of the plain deltas
    before = _global(admin, info, record.base_version, tmp)
    after = _global(admin, info, record.result_version or "", tmp)
    total = sum(n for _, n in plain.values())
    mean = sum(d * n for d, n in plain.values()) / total
    want = before + mean
    bound = 0.5 / 2**SCALE_BITS + np.abs(want) * 2**-23  # fixed point, then float32 rounding
    assert np.all(np.abs(after - want) <= bound + 1e-12), np.abs(after - want).max()
    assert np.abs(mean).max() > 1e-4  # the deltas were not all zero


def _blob_path(server: ServerProcess, sha: str) -> Path:
    return server.data_dir / "blobs" / "sha256" / sha[:2] / sha[2:]


def test_secure_round_status_is_served_and_plain_uploads_refused(
    server: ServerProcess, tmp_path: Path
) -> None:
    admin = server.admin()
    info = admin.create_federation(_spec(quorum=3, min_updates=2))
    creds = _org(server, info, tmp_path, "org-a", 0)
    client = _client(server, creds)
    http = server.http(load(creds).api_key)
    answer = http.put(
        f"/v1/federations/{info.id}/rounds/1/update",
        content=b"\0" * 64,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 409 and answer.json()["error"] == "secure_aggregation_only"
    state = SecureRound(client, info.spec, info.id, load(creds).client_id, tmp_path).state(1)
    assert (state.phase, state.attempt, state.in_cohort) == ("advertise", 1, False)
    bad = http.post(
        f"/v1/federations/{info.id}/rounds/1/secure-aggregation/keys",
        json={"attempt": 1, "c_pk": "zz", "s_pk": "00" * 32},
    )
    assert bad.status_code == 422 and "c_pk" in bad.text
    assert (
        json.loads(http.get(f"/v1/federations/{info.id}/rounds/1/secure-aggregation").text)["phase"]
        == "advertise"
    )


def test_a_pause_mid_protocol_holds_the_secure_round_and_the_clients_finish_it(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Two `fedtune-client train` processes and a third client (in this process) advertise
    keys; the operator pauses in the share phase and keeps the federation paused past that
    phase's deadline. Nothing moves while paused; after the resume the phase has its whole
    time again, the processes carry on by themselves and the round closes with all three, in
    the first attempt."""
    admin = server.admin()
    info = admin.create_federation(_spec(quorum=3, min_updates=3, share_keys_s=8))
    orgs = ["org-a", "org-b"]
    for i, org in enumerate(orgs):
        _org(server, info, tmp_path, org, seed=i)
    third = Victim(server, info, tmp_path)

    procs = _train(server, tmp_path, orgs)
    with _reaped(procs):
        st = third._wait(1, ("advertise",))
        third.round.advertise(1, st.attempt)
        third._wait(1, ("share",))
        assert admin.pause_federation(info.id).status == "paused"
        time.sleep(10)  # past the share phase's 8 s, with the sweeper running
        frozen = third.round.state(1)
        assert all(p.proc.poll() is None for p in procs)  # the processes wait, they do not fail
        assert admin.resume_federation(info.id).status == "running"
        assert third.round.run(1, third.delta(1), 5) is True  # its steps, to the aggregation
        codes = [p.wait(timeout=600) for p in procs]

    assert (frozen.attempt, frozen.phase, frozen.events) == (1, "share", [])
    assert codes == [0, 0], "\n".join(p.output()[-3000:] for p in procs)
    (record,) = admin.list_rounds(info.id)
    assert record.status == "closed" and record.participant_count == 3 and record.excluded == {}
    after = third.round.state(1)
    assert (after.attempt, after.phase, after.events) == (1, "done", [])


def _until_logged(proc: ClientProcess, text: str) -> None:
    """Wait until the running process `proc` logs `text`."""
    deadline = time.monotonic() + 300
    while text not in proc.output():
        assert proc.proc.poll() is None, proc.output()[-3000:]
        assert time.monotonic() < deadline, proc.output()[-3000:]
        time.sleep(0.2)


def _start_late(
    admin: FedTuneClient, fid: str, args: list[str], log: Path, procs: list[ClientProcess]
) -> None:
    """Start a `fedtune-client train` process (appended to `procs`) while the federation is
    paused, so that it has started up when the share phase goes on, then wait until it sits
    out attempt 1."""
    assert admin.pause_federation(fid).status == "paused"
    procs.append(start_client("org-d", args, log))
    _until_logged(procs[-1], "waiting for it to resume")
    assert admin.resume_federation(fid).status == "running"
    _until_logged(procs[-1], "sitting out attempt 1")


def test_a_process_too_late_for_the_cohort_joins_the_attempt_after_a_restart(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Quorum and min_updates 3 of four organisations. Two `fedtune-client train` processes
    and a fourth client (in this process) form attempt 1's cohort; a third process, started
    once the cohort is drawn, sits that attempt out, and so does the same organisation's
    process started again after a kill. The fourth client never shares its keys, so attempt 1
    fails at the share phase's deadline; the three processes form attempt 2 and the round
    aggregates them (before, the late process gave the round up in its journal, and the round
    waited forever for a third advertisement)."""
    admin = server.admin()
    info = admin.create_federation(_spec(quorum=3, min_updates=3, share_keys_s=15))
    orgs = ["org-a", "org-b", "org-d"]
    a, b, d = (_org(server, info, tmp_path, org, seed=i) for i, org in enumerate(orgs))
    gone = Victim(server, info, tmp_path)
    late = train_args(server, d, tmp_path / "org-d" / "data", tmp_path / "org-d" / "w")

    procs = _train(server, tmp_path, orgs[:2])
    with _reaped(procs):
        gone.round.advertise(1, gone._wait(1, ("advertise",)).attempt)
        drawn = gone._wait(1, ("share",))
        _start_late(admin, info.id, late, tmp_path / "org-d" / "first.log", procs)
        procs.pop().proc.kill()
        _start_late(admin, info.id, late, tmp_path / "org-d" / "again.log", procs)
        codes = [p.wait(timeout=600) for p in procs]

    assert codes == [0, 0, 0], "\n".join(p.output()[-3000:] for p in procs)
    ids = {load(creds).client_id: org for creds, org in zip((a, b, d), orgs, strict=True)}
    assert sorted(drawn.cohort) == sorted([gone.id, load(a).client_id, load(b).client_id])
    assert "re-sending the delta written before a restart" in procs[-1].output()
    (record,) = admin.list_rounds(info.id)
    assert record.status == "closed" and record.participant_count == 3
    assert sorted(ids[p.client_id] for p in record.participants) == orgs
    events = gone.round.state(1).events
    assert any("attempt 1 failed in phase share: only 2 of" in e for e in events), events
    _check_masked_and_fedavg(server, admin, info, record, tmp_path, orgs)
