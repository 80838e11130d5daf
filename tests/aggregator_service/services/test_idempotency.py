"""`run_once`: one run per key, the answer replayed, secrets derived and never stored, the
answer durable with the effect; on SQLite, and on PostgreSQL where FEDTUNE_TEST_POSTGRES_URL
names a server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from aggregator_service.main import build_core
from aggregator_service.services.context import Core, Mint
from aggregator_service.services.errors import Conflict, Invalid
from aggregator_service.services.idempotency import Attempt, Keep, run_once
from aggregator_service.services.viewers import ViewerTokenRequest, create_viewer_token
from aggregator_service.settings import Settings
from aggregator_service.storage.tables import idempotency_keys, viewer_tokens
from tests.aggregator_service.db_faults import refusing_writes


class Issued(BaseModel):
    run: int
    secret: str


@pytest.fixture
def core(database_url: str | None, tmp_path: Path) -> Iterator[Core]:
    """On SQLite, then on a fresh PostgreSQL database."""
    core = build_core(
        Settings(
            data_dir=tmp_path,
            admin_token="fta_idempotency-0123456789abcdef01234",
            database_url=database_url,
        )
    )
    yield core
    core.db.dispose()


def _attempt(payload: str = '{"name":"org"}', credential: str = "fte_one", key: str = "k1"):
    return Attempt(credential, "POST /v1/clients", key, payload)


Call = Callable[[Mint, Keep], Issued]


def _issue(core: Core, run: int, mint: Mint, keep: Keep) -> Issued:
    """A request's effect: its answer, kept in a transaction of its own."""
    issued = Issued(run=run, secret=mint("ftk_", 32))
    with core.db.write() as conn:
        keep(conn, issued)
    return issued


def _counting(core: Core) -> tuple[Call, list[int]]:
    runs: list[int] = []

    def call(mint: Mint, keep: Keep) -> Issued:
        runs.append(1)
        return _issue(core, len(runs), mint, keep)

    return call, runs


def _viewer_tokens(core: Core) -> int:
    with core.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(viewer_tokens)).scalar_one())


def _new_viewer_token(core: Core) -> Callable[[Mint, Keep], BaseModel]:
    return lambda mint, keep: create_viewer_token(core, ViewerTokenRequest(name="wall"), mint, keep)


def _stored(core: Core) -> list[str]:
    with core.db.read() as conn:
        return list(conn.execute(select(idempotency_keys.c.answer)).scalars())


def test_same_attempt_runs_once_and_replays_the_answer_with_its_secret(core):
    call, runs = _counting(core)

    first = run_once(core, _attempt(), call)
    again = run_once(core, _attempt(), call)

    assert len(runs) == 1
    assert (again.body, again.replayed, first.replayed) == (first.body, True, False)
    secret = Issued.model_validate_json(first.body).secret
    assert secret.startswith("ftk_") and len(secret) == len("ftk_") + 43
    assert all(secret[4:] not in answer for answer in _stored(core))


def test_same_key_with_another_body_is_a_conflict(core):
    call, runs = _counting(core)
    run_once(core, _attempt('{"name":"org"}'), call)

    with pytest.raises(Conflict) as refused:
        run_once(core, _attempt('{"name":"other"}'), call)

    assert refused.value.error == "idempotency_key_reused" and len(runs) == 1


@pytest.mark.parametrize(
    "other",
    [
        _attempt(credential="fte_two"),
        _attempt(key="k2"),
        Attempt("fte_one", "POST /v1/federations", "k1", '{"name":"org"}'),
    ],
    ids=["another_caller", "another_key", "another_route"],
)
def test_another_caller_key_or_route_runs_anew_with_other_secrets(core, other):
    call, runs = _counting(core)

    first = Issued.model_validate_json(run_once(core, _attempt(), call).body)
    second = Issued.model_validate_json(run_once(core, other, call).body)

    assert len(runs) == 2 and first.secret != second.secret


def test_retry_while_the_first_still_runs_is_refused_as_in_use(core):
    refusals: list[Conflict] = []

    def call(mint: Mint, keep: Keep) -> Issued:
        with pytest.raises(Conflict) as inner:
            run_once(core, _attempt(), call)
        refusals.append(inner.value)
        return _issue(core, 1, mint, keep)

    run_once(core, _attempt(), call)

    assert [r.error for r in refusals] == ["idempotency_key_in_use"]


def test_racing_retries_run_the_request_once(core):
    call, runs = _counting(core)

    def slow(mint: Mint, keep: Keep) -> Issued:
        time.sleep(0.2)
        return call(mint, keep)

    def attempt() -> bool | str:
        try:
            return run_once(core, _attempt(), slow).replayed
        except Conflict as exc:
            return exc.error

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: attempt(), range(8)))

    assert len(runs) == 1 and outcomes.count(False) == 1
    assert set(outcomes) <= {False, True, "idempotency_key_in_use"}


def test_a_refused_request_keeps_nothing_and_runs_again(core):
    def refuse(_mint: Mint, _keep: Keep) -> Issued:
        raise Invalid("name: no")

    with pytest.raises(Invalid):
        run_once(core, _attempt(), refuse)
    call, runs = _counting(core)
    answer = run_once(core, _attempt(), call)

    assert not answer.replayed and len(runs) == 1


def test_an_expired_answer_is_forgotten(core):
    call, runs = _counting(core)
    run_once(core, _attempt(), call)
    with core.db.write() as conn:
        conn.execute(update(idempotency_keys).values(expires_at=0))

    answer = run_once(core, _attempt(), call)

    assert not answer.replayed and len(runs) == 2 and len(_stored(core)) == 1


def test_a_first_run_whose_process_died_is_run_again_with_new_secrets(core):
    call, runs = _counting(core)
    first = Issued.model_validate_json(run_once(core, _attempt(), call).body)
    with core.db.write() as conn:  # as if it died mid-request (nothing committed), long ago
        conn.execute(
            update(idempotency_keys).values(answer=None, created_at=0, expires_at=time.time() + 60)
        )

    again = run_once(core, _attempt(), call)

    assert not again.replayed and len(runs) == 2
    assert Issued.model_validate_json(again.body).secret != first.secret


def test_an_answer_that_cannot_be_stored_undoes_the_request_and_a_retry_runs_it_at_once(core):
    issue = _new_viewer_token(core)
    with refusing_writes(core.db, "idempotency_keys", "answer"), pytest.raises(OperationalError):
        run_once(core, _attempt(), issue)
    issued_after_failure = _viewer_tokens(core)

    again = run_once(core, _attempt(), issue)

    assert issued_after_failure == 0
    assert not again.replayed and _viewer_tokens(core) == 1
    assert run_once(core, _attempt(), issue).body == again.body


def test_a_run_taken_over_as_abandoned_cannot_commit_its_effect_or_its_answer(core):
    issue = _new_viewer_token(core)
    taken_over: list[str] = []

    def stalled(mint: Mint, keep: Keep) -> BaseModel:
        with core.db.write() as conn:  # as if it had run for more than 15 minutes
            conn.execute(update(idempotency_keys).values(created_at=0))
        taken_over.append(run_once(core, _attempt(), issue).body)
        return issue(mint, keep)

    with pytest.raises(Conflict) as refused:
        run_once(core, _attempt(), stalled)

    assert refused.value.error == "idempotency_key_in_use"
    assert _viewer_tokens(core) == 1
    replay = run_once(core, _attempt(), issue)
    assert replay.replayed and replay.body == taken_over[0]


def test_a_call_that_does_not_keep_its_answer_is_a_bug(core):
    def forgetful(mint: Mint, _keep: Keep) -> Issued:
        return Issued(run=1, secret=mint("ftk_", 32))

    with pytest.raises(RuntimeError, match="did not keep its answer"):
        run_once(core, _attempt(), forgetful)
