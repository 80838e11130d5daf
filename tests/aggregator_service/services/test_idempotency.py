"""`run_once`: one run per key, the answer replayed, secrets derived and never stored; on
SQLite, and on PostgreSQL where FEDTUNE_TEST_POSTGRES_URL names a server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import BaseModel
from sqlalchemy import select, update

from aggregator_service.main import build_core
from aggregator_service.services.context import Core, Mint
from aggregator_service.services.errors import Conflict, Invalid
from aggregator_service.services.idempotency import Attempt, run_once
from aggregator_service.settings import Settings
from aggregator_service.storage.tables import idempotency_keys


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


def _counting() -> tuple[Callable[[Mint], Issued], list[int]]:
    runs: list[int] = []

    def call(mint: Mint) -> Issued:
        runs.append(1)
        return Issued(run=len(runs), secret=mint("ftk_", 32))

    return call, runs


def _stored(core: Core) -> list[str]:
    with core.db.read() as conn:
        return list(conn.execute(select(idempotency_keys.c.answer)).scalars())


def test_same_attempt_runs_once_and_replays_the_answer_with_its_secret(core):
    call, runs = _counting()

    first = run_once(core, _attempt(), call)
    again = run_once(core, _attempt(), call)

    assert len(runs) == 1
    assert (again.body, again.replayed, first.replayed) == (first.body, True, False)
    secret = Issued.model_validate_json(first.body).secret
    assert secret.startswith("ftk_") and len(secret) == len("ftk_") + 43
    assert all(secret[4:] not in answer for answer in _stored(core))


def test_same_key_with_another_body_is_a_conflict(core):
    call, runs = _counting()
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
    call, runs = _counting()

    first = Issued.model_validate_json(run_once(core, _attempt(), call).body)
    second = Issued.model_validate_json(run_once(core, other, call).body)

    assert len(runs) == 2 and first.secret != second.secret


def test_retry_while_the_first_still_runs_is_refused_as_in_use(core):
    refusals: list[Conflict] = []

    def call(mint: Mint) -> Issued:
        with pytest.raises(Conflict) as inner:
            run_once(core, _attempt(), call)
        refusals.append(inner.value)
        return Issued(run=1, secret=mint("ftk_", 32))

    run_once(core, _attempt(), call)

    assert [r.error for r in refusals] == ["idempotency_key_in_use"]


def test_racing_retries_run_the_request_once(core):
    call, runs = _counting()

    def slow(mint: Mint) -> Issued:
        time.sleep(0.2)
        return call(mint)

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
    def refuse(_mint: Mint) -> Issued:
        raise Invalid("name: no")

    with pytest.raises(Invalid):
        run_once(core, _attempt(), refuse)
    call, runs = _counting()
    answer = run_once(core, _attempt(), call)

    assert not answer.replayed and len(runs) == 1


def test_an_expired_answer_is_forgotten(core):
    call, runs = _counting()
    run_once(core, _attempt(), call)
    with core.db.write() as conn:
        conn.execute(update(idempotency_keys).values(expires_at=0))

    answer = run_once(core, _attempt(), call)

    assert not answer.replayed and len(runs) == 2 and len(_stored(core)) == 1


def test_a_first_run_whose_process_died_is_run_again_with_new_secrets(core):
    call, runs = _counting()
    first = Issued.model_validate_json(run_once(core, _attempt(), call).body)
    with core.db.write() as conn:  # as if it died before storing its answer, long ago
        conn.execute(
            update(idempotency_keys).values(answer=None, created_at=0, expires_at=time.time() + 60)
        )

    again = run_once(core, _attempt(), call)

    assert not again.replayed and len(runs) == 2
    assert Issued.model_validate_json(again.body).secret != first.secret
