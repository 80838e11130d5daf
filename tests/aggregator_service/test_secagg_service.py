"""Secure aggregation against a real app over HTTP, driven through the SDK's protocol steps
(client_sdk.secagg.SecureRound) with deltas written here: the aggregate, an inconsistent
unmasking share named, every bad input refused with its detail and no trace, a client that
cannot go on (accused, diverged, an unusable neighbour key, revoked) leaving the attempt to the
others, a client left out of one attempt joining the next, a masked input's blob kept through
a failed commit, and steps and sweepers racing on the round's row."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from sqlalchemy import select

from aggregator_service.services.secagg.round import load_round, record_step, restart, steps
from aggregator_service.services.secagg.unmask import finish
from aggregator_service.storage.tables import secagg_steps
from client_sdk import FedTuneClient
from client_sdk._exceptions import ConflictError
from client_sdk.secagg import SecureAggregationError, SecureRound
from shared.api import SecaggComplaint, SecaggReceipt, SecaggState, SecaggUnmaskShare
from shared.blobs import Blob, atomic_save_state, encode_state
from shared.secagg.shamir import PRIME, share_to_bytes
from tests.aggregator_service.conftest import AppPool, Federation, create_federation, tiny_spec
from tests.aggregator_service.db_faults import failing_commits

SCALE_BITS = 24


def secure_spec(clients: int, min_updates: int = 2, **secure: Any) -> dict[str, Any]:
    spec = tiny_spec(total=2, quorum=clients, min_updates=min_updates, deadline_s=600)
    spec["aggregation"] = {"strategy": "fedavg", "weighting": "num_examples", "clip_norm": None}
    spec["secure_aggregation"] = {"scale_bits": SCALE_BITS, **secure}
    return spec


class Org:
    def __init__(self, fed: Federation, cid: str, tmp: Path) -> None:
        self.cid = cid
        self.client = FedTuneClient(fed.app.url, api_key=fed.keys[cid], allow_http=True)
        self.round = SecureRound(self.client, fed.info.spec, fed.id, cid, tmp / cid)
        gen = torch.Generator().manual_seed(len(cid) + sum(map(ord, cid)))
        self.delta = {
            n: torch.randn(t.shape, generator=gen) * 1e-2 for n, t in fed.info.manifest.items()
        }
        self.num_examples = 10 + sum(map(ord, cid)) % 50
        self.path = tmp / f"{cid}.safetensors"
        atomic_save_state(self.path, self.delta, {"metrics": '{"train_loss": 1.0}'})

    def state(self, number: int = 1) -> SecaggState:
        return self.round.state(number)


def secure_orgs(fed: Federation, tmp: Path) -> list[Org]:
    return [Org(fed, cid, tmp) for cid in sorted(fed.keys)]


def until_phase(orgs: list[Org], phase: str, number: int = 1) -> None:
    deadline = time.monotonic() + 30
    while orgs[0].state(number).phase != phase:
        assert time.monotonic() < deadline, orgs[0].state(number)
        time.sleep(0.05)


def _to_share(orgs: list[Org], number: int = 1) -> None:
    """Every org advertises its keys (attempt 1); the round is then in phase share."""
    for o in orgs:
        o.round.advertise(number, 1)
    until_phase(orgs, "share", number)


def _to_input(orgs: list[Org], number: int = 1) -> None:
    _to_share(orgs, number)
    for o in orgs:
        o.round._post(number, "/shares", o.round.share_body(number, o.state(number)))
    until_phase(orgs, "input", number)


def _mask(orgs: list[Org], number: int = 1, attempt: int = 1) -> None:
    for o in orgs:
        st = o.state(number)
        o.round.received(number, st)
        masked = o.round.masked_input(number, st, o.path, o.num_examples)
        o.round.upload_masked(number, attempt, masked)


def _unmask(fed: Federation, orgs: list[Org]) -> dict[str, Any]:
    """Every org sends its unmasking shares once the round reaches unmask; the closed round's
    record."""
    until_phase(orgs, "unmask")
    for o in orgs:
        o.round._post(1, "/unmask", o.round.unmask_body(1, o.state()))
    return _wait_closed(fed)


def _mean(orgs: list[Org]) -> dict[str, torch.Tensor]:
    total = sum(o.num_examples for o in orgs)
    return {
        n: sum(o.delta[n].double() * o.num_examples for o in orgs) / total  # type: ignore[misc]
        for n in orgs[0].delta
    }


def _wait_closed(fed: Federation, number: int = 1) -> dict[str, Any]:
    fed.wait_round(number + 1)
    with fed.app.client() as c:
        record: dict[str, Any] = c.get(f"/v1/federations/{fed.id}/rounds/{number}").json()
    return record


def _assert_fedavg(fed: Federation, orgs: list[Org], record: dict[str, Any]) -> None:
    before, after = fed.state(0), fed.state(record["result_version"])
    for name, mean in _mean(orgs).items():
        want = before[name].double() + mean
        err = (after[name].double() - want).abs()
        assert bool((err <= 0.5 / 2**SCALE_BITS + want.abs() * 2**-23 + 1e-12).all()), name


@pytest.mark.parametrize(("modulus_bits", "word"), [(64, "int64"), (32, "int32")])
def test_the_aggregate_is_fedavg_of_the_survivors_and_a_lying_holder_is_named(
    start_app: Callable[..., Any], tmp_path: Path, modulus_bits: int, word: str
) -> None:
    """Six clients (each the others' neighbour, 3 of 5 shares rebuild a secret): one leaves
    before its masked input, one sends a wrong share when unmasking. The redundant shares
    name that holder, and the aggregate is FedAvg of the five survivors. Modulo 2^32 the
    masked inputs are int32 words, as large as the float32 deltas, and int64 ones are refused."""
    pool: AppPool = start_app  # type: ignore[assignment]
    spec = secure_spec(6, unmask_s=60, masked_input_s=3, modulus_bits=modulus_bits)
    fed = create_federation(pool(), spec, 6)
    orgs = secure_orgs(fed, tmp_path)
    _to_input(orgs)
    gone, liar, *rest = orgs
    survivors = [liar, *rest]
    if modulus_bits == 32:
        wide = {n: torch.zeros(t.shape, dtype=torch.int64) for n, t in liar.delta.items()}
        meta = {"format": "fedtune-masked/1", "federation": fed.id, "round": "1", "attempt": "1"}
        with fed.as_client(liar.cid) as c:
            r = c.put(
                f"/v1/federations/{fed.id}/rounds/1/secure-aggregation/masked-input?attempt=1",
                content=encode_state(wide, {**meta, "num_examples": "5"}),
            )
        assert r.status_code == 422 and "int32 words (modulus 2^32)" in r.json()["detail"]
    _mask(survivors)
    until_phase(orgs, "unmask")
    st = liar.state()
    assert sorted(st.survivors) == sorted(o.cid for o in survivors)
    body = liar.round.unmask_body(1, st)
    first = body.shares[0]
    wrong = int(first.share, 16) + 1
    bad = SecaggUnmaskShare(
        owner=first.owner, kind=first.kind, share=share_to_bytes(wrong % PRIME).hex()
    )
    liar.round._post(1, "/unmask", body.model_copy(update={"shares": [bad, *body.shares[1:]]}))
    for o in rest:
        o.round._post(1, "/unmask", o.round.unmask_body(1, o.state()))

    record = _wait_closed(fed)

    assert record["participant_count"] == 5
    assert "dropped out" in record["excluded"][gone.cid]
    for p in record["participants"]:
        blob = Blob.open(fed.app.core.blobs.path(p["sha256"]))
        try:
            assert {t.dtype for t in blob.tensors.values()} == {word}
            float32_bytes = sum(4 * t.numel() for t in liar.delta.values())
            assert blob.header.data_size == float32_bytes * (2 if word == "int64" else 1)
        finally:
            blob.close()
    events = liar.state().events
    secret = "b" if first.kind == "b" else "s_sk"
    named = f"{liar.cid}'s share of {first.owner}'s {secret} is inconsistent"
    assert any(named in e for e in events), events
    _assert_fedavg(fed, survivors, record)


def test_every_bad_input_is_refused_with_its_reason_and_changes_nothing(
    start_app: Callable[..., Any], tmp_path: Path
) -> None:
    pool: AppPool = start_app  # type: ignore[assignment]
    app = pool()
    fed = create_federation(app, secure_spec(3), 4)
    orgs = secure_orgs(fed, tmp_path)
    outsider = orgs.pop()
    base = f"/v1/federations/{fed.id}/rounds/1/secure-aggregation"

    def call(o: Org, method: str, tail: str, **kw: Any) -> httpx.Response:
        with fed.as_client(o.cid) as c:
            return c.request(method, base + tail, **kw)

    keys = {"attempt": 1, "c_pk": "ab" * 32, "s_pk": "cd" * 32}
    assert call(orgs[0], "POST", "/keys", json={**keys, "s_pk": "ab" * 32}).status_code == 422
    assert call(orgs[0], "POST", "/keys", json={**keys, "attempt": 2}).status_code == 409
    assert call(orgs[0], "POST", "/shares", json={"attempt": 1, "shares": []}).status_code == 409
    first = call(orgs[0], "POST", "/keys", json=keys)
    again = call(orgs[0], "POST", "/keys", json=keys)
    other = call(orgs[0], "POST", "/keys", json={**keys, "c_pk": "ef" * 32})
    assert (first.status_code, again.status_code, again.json()["duplicate"]) == (201, 200, True)
    assert other.status_code == 409 and "different keys" in other.json()["detail"]
    # the real clients replace the hand-made keys' owner: a fresh attempt is not needed, the
    # first client simply goes on with these keys (it cannot decrypt, which is not tested here)
    for o in orgs[1:]:
        o.round.advertise(1, 1)
    until_phase(orgs, "share")
    late = outsider.round
    with pytest.raises(ConflictError, match="phase share, not advertise"):
        late.advertise(1, 1)
    st = orgs[1].state()
    body = orgs[1].round.share_body(1, st)
    short = body.model_copy(update={"shares": body.shares[:1]})
    r = call(orgs[1], "POST", "/shares", json=short.model_dump(mode="json"))
    assert r.status_code == 422 and "exactly this client's 2 neighbours" in r.json()["detail"]
    cut = [s.model_copy(update={"ciphertext": s.ciphertext[:-2]}) for s in body.shares]
    r = call(
        orgs[1], "POST", "/shares", json={"attempt": 1, "shares": [c.model_dump() for c in cut]}
    )
    assert r.status_code == 422 and "hex digits" in r.json()["detail"]
    r = call(outsider, "POST", "/shares", json=body.model_dump(mode="json"))
    assert r.status_code == 403 and r.json()["error"] == "not_in_cohort"
    assert "shares" not in orgs[1].state().done  # nothing of the refused bodies was kept
    # a masked input: refused before the protocol reaches it, without a token before its body
    upload = f"{base}/masked-input?attempt=1"
    with app.client(None) as anon:
        assert anon.put(upload, content=b"\0" * 100).status_code == 401
    junk = call(orgs[1], "PUT", "/masked-input?attempt=1", content=b"not a safetensors file")
    assert junk.status_code == 400
    plain = encode_state(orgs[1].delta, {"format": "fedtune-masked/1"})
    r = call(orgs[1], "PUT", "/masked-input?attempt=1", content=plain)
    assert r.status_code == 422 and "int64 words" in r.json()["detail"]
    words = {n: torch.zeros(t.shape, dtype=torch.int64) for n, t in orgs[1].delta.items()}
    meta = {"format": "fedtune-masked/1", "federation": fed.id, "round": "1", "attempt": "1"}
    r = call(orgs[1], "PUT", "/masked-input?attempt=1", content=encode_state(words, meta))
    assert r.status_code == 422 and "num_examples" in r.json()["detail"]
    ok = encode_state(words, {**meta, "num_examples": "5"})
    r = call(orgs[1], "PUT", "/masked-input?attempt=1", content=ok + b"\0" * 8)
    assert r.status_code == 422 and "Content-Length" in r.json()["detail"]
    r = call(orgs[1], "PUT", "/masked-input?attempt=1", content=ok)
    assert r.status_code == 409 and "phase share, not input" in r.json()["detail"]
    assert orgs[1].state().done == ["keys"]
    with fed.app.client() as c:
        assert c.get(f"/v1/federations/{fed.id}/rounds/current").json()["received"] == 0
    # a plain delta is refused for a secure federation
    r = fed.upload(orgs[1].cid, 1, encode_state(orgs[1].delta))
    assert r.status_code == 409 and r.json()["error"] == "secure_aggregation_only"


def test_a_server_optimiser_runs_on_the_unmasked_mean(
    start_app: Callable[..., Any], tmp_path: Path
) -> None:
    pool: AppPool = start_app  # type: ignore[assignment]
    spec = secure_spec(3)
    spec["aggregation"] = {**spec["aggregation"], "strategy": "fedavgm"}
    fed = create_federation(pool(), spec, 3)
    orgs = secure_orgs(fed, tmp_path)
    _to_input(orgs)
    _mask(orgs)
    record = _unmask(fed, orgs)
    assert record["participant_count"] == 3 and record["closed_by"] == "quorum"
    before, after = fed.state(0), fed.state(record["result_version"])
    lr = fed.info.spec.aggregation.strategy_options().model_dump().get("server_lr", 1.0)
    for name, mean in _mean(orgs).items():  # the first FedAvgM step is lr x the mean delta
        want = before[name].double() + lr * mean
        assert np.allclose(after[name].double().numpy(), want.numpy(), atol=1e-6)


def test_too_few_left_restarts_the_protocol_with_fresh_keys(
    start_app: Callable[..., Any], tmp_path: Path
) -> None:
    """Only one of three clients shares its keys before the phase's deadline: the attempt
    fails (recorded), attempt 2 starts from advertising, and completes the round."""
    pool: AppPool = start_app  # type: ignore[assignment]
    fed = create_federation(pool(), secure_spec(3, share_keys_s=3), 3)
    orgs = secure_orgs(fed, tmp_path)
    _to_share(orgs)
    orgs[0].round._post(1, "/shares", orgs[0].round.share_body(1, orgs[0].state()))
    deadline = time.monotonic() + 30
    while orgs[0].state().attempt == 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    st = orgs[0].state()
    assert (st.attempt, st.phase) == (2, "advertise")
    assert any(
        "attempt 1 failed in phase share: only 1 of the cohort shared" in e for e in st.events
    )
    with pytest.raises(ConflictError, match="attempt 1 of round 1 is over"):
        orgs[1].round.advertise(1, 1)
    assert _attempt_gauge(fed) == 2.0  # what an operator's alert on restarts reads
    for o in orgs:  # attempt 2, run by the SDK's own loop
        o.round.advertise(1, 2)
    until_phase(orgs, "share")
    for o in orgs:
        o.round._post(1, "/shares", o.round.share_body(1, o.state()))
    until_phase(orgs, "input")
    _mask(orgs, attempt=2)
    record = _unmask(fed, orgs)
    assert record["participant_count"] == 3
    _assert_fedavg(fed, orgs, record)
    assert _attempt_gauge(fed) is None  # round 2 has not started its protocol


def _attempt_gauge(fed: Federation) -> float | None:
    """`fedtune_secagg_attempt` for `fed` on /metrics (None when it has no sample)."""
    with fed.app.client() as c:
        text = c.get("/metrics").text
    prefix = f'fedtune_secagg_attempt{{federation="{fed.id}"}} '
    values = [float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else None


def test_a_pause_freezes_the_secure_round_and_a_resume_gives_the_phase_its_time_again(
    database_url: str | None, start_app: Callable[..., Any], tmp_path: Path
) -> None:
    """Two of three clients share their keys, then the operator pauses the federation past
    the share phase's deadline. The phase does not end while paused (the third client's share
    is refused then, not lost to a deadline); on resume it gets its whole time again, the third
    shares, and the round completes with all three. On SQLite and PostgreSQL."""
    pool: AppPool = start_app  # type: ignore[assignment]
    share_keys_s = 3
    fed = create_federation(
        pool(database_url=database_url), secure_spec(3, share_keys_s=share_keys_s), 3
    )
    orgs = secure_orgs(fed, tmp_path)
    _to_share(orgs)
    *early, late = orgs
    for o in early:
        o.round._post(1, "/shares", o.round.share_body(1, o.state()))
    with fed.app.client() as admin:
        assert admin.post(f"/v1/federations/{fed.id}/pause").json()["status"] == "paused"
        with pytest.raises(ConflictError, match="paused"):
            late.round._post(1, "/shares", late.round.share_body(1, late.state()))
        assert _attempt_gauge(fed) == 1.0  # a paused federation's round is still reported
        time.sleep(share_keys_s + 2)  # past the deadline, with the sweeper running
        st = late.state()
        assert (st.attempt, st.phase, st.events) == (1, "share", [])
        resumed_at = time.time()
        assert admin.post(f"/v1/federations/{fed.id}/resume").json()["status"] == "running"
    st = late.state()
    assert st.deadline_at.timestamp() >= resumed_at + share_keys_s - 0.5
    late.round._post(1, "/shares", late.round.share_body(1, st))
    until_phase(orgs, "input")
    assert sorted(late.state().shared) == sorted(o.cid for o in orgs)
    _mask(orgs)
    record = _unmask(fed, orgs)
    assert record["participant_count"] == 3
    _assert_fedavg(fed, orgs, record)


def test_a_cancelled_federation_s_secure_round_is_over(
    start_app: Callable[..., Any], tmp_path: Path
) -> None:
    """Cancelled mid-protocol: its round stays open in the history but moves no further, and
    the attempt gauge drops it."""
    pool: AppPool = start_app  # type: ignore[assignment]
    fed = create_federation(pool(), secure_spec(3, share_keys_s=3), 3)
    orgs = secure_orgs(fed, tmp_path)
    _to_share(orgs)
    assert _attempt_gauge(fed) == 1.0
    with fed.app.client() as admin:
        assert admin.post(f"/v1/federations/{fed.id}/cancel").json()["status"] == "cancelled"
    time.sleep(5)  # past the share deadline: a running federation would have restarted
    st = orgs[0].state()
    assert (st.attempt, st.phase, st.events) == (1, "share", [])
    assert _attempt_gauge(fed) is None


# X25519 public keys of small order (and non-canonical encodings of them): X25519 with any
# private key gives all zeros, so no secret can be agreed with them.
LOW_ORDER_POINTS = {
    "zero": "00" * 32,
    "one": "01" + "00" * 31,
    "p_minus_one": "ec" + "ff" * 30 + "7f",
    "p": "ed" + "ff" * 30 + "7f",
    "p_plus_one": "ee" + "ff" * 30 + "7f",
    "order_8": "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "order_8_other": "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
}


@pytest.fixture(scope="module")
def keyless_federation(start_module_app: AppPool) -> Federation:
    """A secure federation whose first round never starts: every key sent to it is refused."""
    return create_federation(start_module_app(), secure_spec(3), 3)


@pytest.mark.parametrize("point", sorted(LOW_ORDER_POINTS))
@pytest.mark.parametrize("which", ["c_pk", "s_pk"])
def test_a_low_order_public_key_is_refused_at_advertise_and_changes_nothing(
    keyless_federation: Federation, which: str, point: str
) -> None:
    fed = keyless_federation
    cid = sorted(fed.keys)[0]
    keys = {"attempt": 1, "c_pk": "ab" * 32, "s_pk": "cd" * 32, which: LOW_ORDER_POINTS[point]}
    base = f"/v1/federations/{fed.id}/rounds/1/secure-aggregation"

    with fed.as_client(cid) as c:
        r = c.post(f"{base}/keys", json=keys)
        st = c.get(base).json()

    assert r.status_code == 422 and r.json()["error"] == "invalid_keys"
    assert r.json()["detail"].startswith(f"{which} is a low-order X25519 point")
    assert (st["phase"], st["attempt"], st["done"], st["cohort"]) == ("advertise", 1, [], [])
    with fed.app.core.db.read() as conn:
        assert load_round(conn, fed.info.spec, fed.id, 1) is None


@contextmanager
def _loops(fed: Federation, *orgs: Org) -> Iterator[list[Future[bool | None]]]:
    """Each org's own loop (`SecureRound.run` of round 1) in a thread while open. A test that
    fails meanwhile cancels the federation, so that the loops end instead of blocking it."""
    threads = ThreadPoolExecutor(len(orgs))
    try:
        yield [threads.submit(o.round.run, 1, o.path, o.num_examples) for o in orgs]
    except BaseException:
        with fed.app.client() as admin:
            admin.post(f"/v1/federations/{fed.id}/cancel")
        raise
    finally:
        threads.shutdown()


def _outcomes(loops: list[Future[bool | None]]) -> list[bool | None]:
    return [f.result(timeout=60) for f in loops]


def _logged(caplog: pytest.LogCaptureFixture, text: str, count: int = 1) -> list[str]:
    """The captured lines holding `text`, once there are `count` (the loops run in threads)."""
    deadline = time.monotonic() + 30
    while len(lines := [r.getMessage() for r in caplog.records if text in r.getMessage()]) < count:
        assert time.monotonic() < deadline, f"{len(lines)} lines logged {text!r}"
        time.sleep(0.05)
    return lines


def _steps_of(fed: Federation, org: Org, attempt: int) -> list[str]:
    with fed.app.core.db.read() as conn:
        taken = conn.execute(
            select(secagg_steps.c.step).where(
                secagg_steps.c.federation_id == fed.id,
                secagg_steps.c.attempt == attempt,
                secagg_steps.c.client_id == org.cid,
            )
        )
        return sorted(taken.scalars())


def test_a_client_too_late_for_the_cohort_joins_the_attempt_after_a_restart(
    start_app: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Quorum and min_updates 3 of four clients: A, B and C form attempt 1's cohort, and D,
    too late for it, sits the attempt out. C never shares its keys, so attempt 1 fails at
    the share phase's deadline; A, B and D, each running the SDK's own loop, form attempt 2
    and the round aggregates the three of them (it hung before: D had given the round up)."""
    pool: AppPool = start_app  # type: ignore[assignment]
    fed = create_federation(pool(), secure_spec(3, min_updates=3, share_keys_s=5), 4)
    a, b, c, d = secure_orgs(fed, tmp_path)
    for o in (a, b, c):
        o.round.advertise(1, 1)
    until_phase([a], "share")

    with caplog.at_level(logging.INFO, logger="client_sdk"), _loops(fed, a, b, d) as loops:
        (line,) = _logged(caplog, "sitting out attempt 1")
        outcomes = _outcomes(loops)

    assert "not in the attempt's cohort (its keys came after the cohort was drawn)" in line
    assert outcomes == [True, True, True]
    record = _wait_closed(fed)
    assert sorted(p["client_id"] for p in record["participants"]) == [a.cid, b.cid, d.cid]
    st = d.state()
    assert (st.attempt, sorted(st.cohort)) == (2, [a.cid, b.cid, d.cid])
    assert any("attempt 1 failed in phase share: only 2 of" in e for e in st.events), st.events
    _assert_fedavg(fed, [a, b, d], record)


def test_a_client_handed_an_unusable_neighbour_key_sits_out_the_attempt_and_joins_the_next(
    start_app: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A neighbour's low-order key stored by a service from before they were refused: each
    client's own loop logs one line naming it and sends nothing more in that attempt, instead
    of failing. The attempt fails for want of shares; in the next the two clients take part
    and the round aggregates them."""
    pool: AppPool = start_app  # type: ignore[assignment]
    fed = create_federation(pool(), secure_spec(3, advertise_s=3, share_keys_s=3), 3)
    orgs = secure_orgs(fed, tmp_path)
    honest, other, weak = orgs
    honest.round.advertise(1, 1)
    core = fed.app.core
    with core.db.write() as conn:
        rnd = load_round(conn, fed.info.spec, fed.id, 1)
        assert rnd is not None
        keys = {"attempt": 1, "c_pk": LOW_ORDER_POINTS["zero"], "s_pk": "cd" * 32}
        record_step(conn, rnd, weak.cid, "keys", json.dumps(keys), keys)
    other.round.advertise(1, 1)
    until_phase(orgs, "share")

    with caplog.at_level(logging.WARNING, logger="client_sdk"), _loops(fed, honest, other) as loops:
        lines = _logged(caplog, "sitting out attempt 1", count=2)
        outcomes = _outcomes(loops)

    assert len(lines) == 2
    assert all(f"neighbour {weak.cid}'s c_pk" in x and "low-order" in x for x in lines)
    assert _steps_of(fed, honest, 1) == _steps_of(fed, other, 1) == ["keys"]
    assert outcomes == [True, True]
    record = _wait_closed(fed)
    assert record["participant_count"] == 2 and honest.state().attempt == 2
    _assert_fedavg(fed, [honest, other], record)


def test_a_falsely_accused_client_sits_out_the_attempt_and_the_others_finish_it(
    start_app: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One of four clients names another as the sender of a share that failed authentication
    (falsely). The accused client's own loop logs one line and sits the attempt out instead of
    failing; its masked input is not kept, the other three finish the round, whose history
    says why the accused is left out, and the accused's loop ends with the round (False)."""
    pool: AppPool = start_app  # type: ignore[assignment]
    fed = create_federation(pool(), secure_spec(4, unmask_s=60), 4)
    orgs = secure_orgs(fed, tmp_path)
    _to_input(orgs)
    accuser, accused, *rest = orgs
    complaint = SecaggComplaint(attempt=1, accused=accused.cid, reason="a false accusation")
    assert accuser.round._post(1, "/complaints", complaint).duplicate is False
    others = [accuser, *rest]

    with caplog.at_level(logging.WARNING, logger="client_sdk"), _loops(fed, accused) as loops:
        (line,) = _logged(caplog, "sitting out attempt 1")
        _mask(others)
        record = _unmask(fed, others)
        (outcome,) = _outcomes(loops)

    assert outcome is False
    assert "failed authentication" in line
    assert "input" not in accused.state().done
    assert record["participant_count"] == 3
    assert "failed authentication" in record["excluded"][accused.cid]
    assert any(f"{accused.cid} is left out" in e for e in accuser.state().events)
    _assert_fedavg(fed, others, record)


def test_a_diverged_client_sends_no_masked_input_and_the_round_goes_on_without_it(
    start_app: Callable[..., Any], tmp_path: Path
) -> None:
    pool: AppPool = start_app  # type: ignore[assignment]
    fed = create_federation(pool(), secure_spec(4, masked_input_s=3, unmask_s=60), 4)
    orgs = secure_orgs(fed, tmp_path)
    diverged, *rest = orgs
    diverged.delta[sorted(diverged.delta)[0]].view(-1)[0] = float("nan")
    atomic_save_state(diverged.path, diverged.delta, {"metrics": '{"train_loss": 1.0}'})
    _to_input(orgs)

    with pytest.raises(SecureAggregationError, match="training diverged"):
        diverged.round.run(1, diverged.path, diverged.num_examples)

    assert "input" not in diverged.state().done
    _mask(rest)
    record = _unmask(fed, rest)
    assert record["participant_count"] == 3
    assert "dropped out" in record["excluded"][diverged.cid]
    _assert_fedavg(fed, rest, record)


def test_a_masked_input_streaming_when_its_client_is_revoked_is_refused_and_not_kept(
    start_app: Callable[..., Any], tmp_path: Path
) -> None:
    pool: AppPool = start_app  # type: ignore[assignment]
    fed = create_federation(pool(), secure_spec(3), 3)
    orgs = secure_orgs(fed, tmp_path)
    _to_input(orgs)
    org = orgs[0]
    st = org.state()
    org.round.received(1, st)
    body = org.round.masked_input(1, st, org.path, org.num_examples).read_bytes()
    core = fed.app.core
    spool = fed.app.settings.data_dir / "blobs" / "tmp"  # where an upload streams to

    def revoked_midway() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        deadline = time.monotonic() + 30
        while not any(spool.iterdir()):  # the server is streaming the body
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with fed.app.client() as admin:
            assert admin.delete(f"/v1/clients/{org.cid}").json()["revoked"] is True
        yield body[len(body) // 2 :]

    with fed.as_client(org.cid) as c:
        r = c.put(
            f"/v1/federations/{fed.id}/rounds/1/secure-aggregation/masked-input?attempt=1",
            content=revoked_midway(),
            headers={"Content-Length": str(len(body))},
        )

    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert not core.blobs.path(hashlib.sha256(body).hexdigest()).exists()
    assert list(spool.iterdir()) == []
    with core.db.read() as conn:
        rnd = load_round(conn, fed.info.spec, fed.id, 1)
        assert rnd is not None and steps(conn, rnd, "input") == {}


def _masked_body(org: Org) -> bytes:
    st = org.state()
    org.round.received(1, st)
    return org.round.masked_input(1, st, org.path, org.num_examples).read_bytes()


def _put_masked(fed: Federation, org: Org, body: bytes) -> httpx.Response:
    with fed.as_client(org.cid) as c:
        return c.put(
            f"/v1/federations/{fed.id}/rounds/1/secure-aggregation/masked-input?attempt=1",
            content=body,
        )


def test_a_masked_input_whose_commit_fails_leaves_its_blob_for_a_step_that_may_exist(
    start_app: Callable[..., Any], tmp_path: Path
) -> None:
    """A failed COMMIT may have been applied all the same: the blob stays, and the same input
    sent again is taken."""
    pool: AppPool = start_app  # type: ignore[assignment]
    fed = create_federation(pool(), secure_spec(3), 3)
    orgs = secure_orgs(fed, tmp_path)
    _to_input(orgs)
    org = orgs[0]
    body = _masked_body(org)
    blob = fed.app.core.blobs.path(hashlib.sha256(body).hexdigest())

    with failing_commits(fed.app.core.db, "secagg_steps"):
        r = _put_masked(fed, org, body)

    assert r.status_code >= 500
    assert blob.read_bytes() == body
    assert "input" not in org.state().done
    again = _put_masked(fed, org, body)
    assert again.status_code == 201 and again.json()["duplicate"] is False
    assert blob.read_bytes() == body


@pytest.mark.parametrize(("others_sent", "phase"), [(False, "input"), (True, "unmask")])
def test_the_same_masked_input_again_restores_its_missing_blob(
    start_app: Callable[..., Any], tmp_path: Path, others_sent: bool, phase: str
) -> None:
    """As after a COMMIT that raised though it was applied: the step is recorded, its blob is
    not there. The same bytes again answer as a repeat and put the blob back, in phase input
    and once the last input has moved the attempt on."""
    pool: AppPool = start_app  # type: ignore[assignment]
    fed = create_federation(pool(), secure_spec(3, unmask_s=60), 3)
    orgs = secure_orgs(fed, tmp_path)
    _to_input(orgs)
    org, *rest = orgs
    body = _masked_body(org)
    assert _put_masked(fed, org, body).status_code == 201
    if others_sent:
        _mask(rest)
    blob = fed.app.core.blobs.path(hashlib.sha256(body).hexdigest())
    blob.unlink()

    r = _put_masked(fed, org, body)

    assert r.status_code == 200, r.text
    assert (r.json()["duplicate"], r.json()["phase"]) == (True, phase)
    assert blob.read_bytes() == body


def test_a_stale_restart_leaves_a_round_that_moved_on_as_it_is(
    database_url: str | None, start_app: Callable[..., Any], tmp_path: Path
) -> None:
    """A sweeper (another replica's) that read the round before the clients' steps moved it
    cannot restart it. On SQLite and PostgreSQL."""
    pool: AppPool = start_app  # type: ignore[assignment]
    fed = create_federation(pool(database_url=database_url), secure_spec(3), 3)
    orgs = secure_orgs(fed, tmp_path)
    _to_share(orgs)
    core = fed.app.core
    with core.db.read() as conn:
        stale = load_round(conn, fed.info.spec, fed.id, 1)
    assert stale is not None and stale.phase == "share"
    for o in orgs:
        o.round._post(1, "/shares", o.round.share_body(1, o.state()))
    until_phase(orgs, "input")

    with core.db.write() as conn:
        restart(conn, stale, "too few shared keys, as read before they did")

    st = orgs[0].state()
    assert (st.attempt, st.phase, st.events) == (1, "input", [])
    assert sorted(st.shared) == sorted(o.cid for o in orgs)


def test_a_stale_finish_leaves_an_aggregated_round_as_it_is(
    database_url: str | None, start_app: Callable[..., Any], tmp_path: Path
) -> None:
    """A sweeper that read the round in phase unmask cannot finish it again once the last
    unmasking shares did. On SQLite and PostgreSQL."""
    pool: AppPool = start_app  # type: ignore[assignment]
    fed = create_federation(pool(database_url=database_url), secure_spec(3), 3)
    orgs = secure_orgs(fed, tmp_path)
    _to_input(orgs)
    _mask(orgs)
    until_phase(orgs, "unmask")
    core = fed.app.core
    with core.db.read() as conn:
        stale = load_round(conn, fed.info.spec, fed.id, 1)
    assert stale is not None
    record = _unmask(fed, orgs)
    with core.db.read() as conn:
        unmask = steps(conn, stale, "unmask")

    with core.db.write() as conn:
        started = finish(conn, stale, unmask, {}, time.time())

    assert started is False
    with fed.app.client() as c:
        again = c.get(f"/v1/federations/{fed.id}/rounds/1").json()
    assert again == record
    assert orgs[0].state().events == []


def test_concurrent_steps_all_count_and_move_the_round_on_at_once(
    database_url: str | None, start_app: Callable[..., Any], tmp_path: Path
) -> None:
    """Six clients advertise, then share, at the same time: every step is taken and the last
    moves the round on at once, not at the phase's deadline. On SQLite and PostgreSQL."""
    pool: AppPool = start_app  # type: ignore[assignment]
    fed = create_federation(pool(database_url=database_url), secure_spec(6), 6)
    orgs = secure_orgs(fed, tmp_path)

    def share(o: Org) -> SecaggReceipt:
        return o.round._post(1, "/shares", o.round.share_body(1, o.state()))

    with ThreadPoolExecutor(len(orgs)) as threads:
        keyed = list(threads.map(lambda o: o.round.advertise(1, 1), orgs))
        until_phase(orgs, "share")
        shared = list(threads.map(share, orgs))
        until_phase(orgs, "input")

    assert [r.duplicate for r in keyed + shared] == [False] * 12
    st = orgs[0].state()
    assert (st.attempt, sorted(st.cohort), sorted(st.shared)) == (
        1,
        sorted(o.cid for o in orgs),
        sorted(o.cid for o in orgs),
    )
