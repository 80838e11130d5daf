"""Idempotency keys: a request retried with the same key gets the first answer again.

A key is scoped to the caller's credential (the admin token, a client's API key,
or for registration the enrollment token) and to the route, and bound to the
request: the same key with another body is refused. Only answers of requests
that succeeded are kept, for a day: a refused request changed nothing, so
running it again answers as replaying it would. While the first request with a
key still runs, its retries are refused (to retry later), so two never both run.

The answer is stored in the transaction that makes the request's effect (the service calls
`keep(conn, answer)` there), so the effect and its answer are durable together or not at
all: a request whose answer could not be stored changed nothing and runs again, and one that
changed something is always replayed. A first request that never finishes (its process died)
leaves its claim; after `_ABANDONED_S` a retry claims the key again with a new salt, and the
answer of the old run, should it still be running, can no longer be kept, which rolls its
effect back: of two runs of one key, only one ever commits.

Shown-once secrets (a new client's API key, an enrollment token) are kept here
no more than anywhere else: the database holds only hashes of usable secrets,
so that a copy of it is not a list of API keys, and storing answers as sent
would break that for a day. Instead a request under a key derives its secrets
(HMAC-SHA256) from the caller's credential, which the database holds only
hashed, the key and a random salt; the stored answer has a marker where each
secret was, and a replay derives them again.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel
from sqlalchemy import ColumnElement, Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from aggregator_service.services.context import Core, Mint, hash_token, now
from aggregator_service.services.errors import Conflict
from aggregator_service.storage.tables import idempotency_keys as table

__all__ = ["KEEP_S", "Answer", "Attempt", "Keep", "keep_nothing", "run_once"]

KEEP_S = 24 * 3600.0  # how long an answer is replayed
_ABANDONED_S = 15 * 60.0  # a first request still unanswered after this died with its process
# JSON escapes control characters, so a raw one never occurs in an answer: it marks a secret.
_MARK = "\x1f"
_SLOT = re.compile(f"{_MARK}([0-9]+):([0-9]+){_MARK}")

# Stores a request's answer within the transaction that makes its effect: `keep(conn, answer)`.
Keep = Callable[[Connection, BaseModel], None]


def keep_nothing(_conn: Connection, _answer: BaseModel) -> None:
    """The `Keep` of a request without an Idempotency-Key."""


@dataclass(frozen=True)
class Attempt:
    """One request sent with an Idempotency-Key."""

    credential: str  # what the caller authenticates with
    route: str  # method and path, e.g. "POST /v1/clients"
    key: str
    payload: str  # the request body, canonical JSON

    @property
    def id(self) -> str:
        scope = json.dumps([hash_token(self.credential), self.route, self.key])
        return hashlib.sha256(scope.encode("utf-8")).hexdigest()

    @property
    def request_sha256(self) -> str:
        return hashlib.sha256(self.payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Answer:
    """The JSON body of the answer; `replayed` when it is a stored one."""

    body: str
    replayed: bool


class _DerivedSecrets:
    """A `Mint` whose i-th secret is HMAC(seed, i): the same secrets whenever the seed is."""

    def __init__(self, attempt: Attempt, salt: str) -> None:
        message = f"fedtune idempotency\0{salt}\0{attempt.key}".encode()
        self._seed = hmac.digest(attempt.credential.encode("utf-8"), message, "sha256")
        self.minted: list[tuple[str, int]] = []  # (random part, nbytes) in order

    def __call__(self, prefix: str, nbytes: int) -> str:
        part = self._part(len(self.minted), nbytes)
        self.minted.append((part, nbytes))
        return prefix + part

    def _part(self, index: int, nbytes: int) -> str:
        if not 0 < nbytes <= 32:
            raise ValueError(f"a derived secret holds 1 to 32 bytes, not {nbytes}")
        digest = hmac.digest(self._seed, f"secret {index}".encode(), "sha256")[:nbytes]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def seal(self, body: str) -> str:
        """`body` with a marker in place of each secret minted."""
        for index, (part, nbytes) in enumerate(self.minted):
            body = body.replace(part, f"{_MARK}{index}:{nbytes}{_MARK}")
        return body

    def unseal(self, stored: str) -> str:
        return _SLOT.sub(lambda m: self._part(int(m[1]), int(m[2])), stored)


def run_once(core: Core, attempt: Attempt, call: Callable[[Mint, Keep], BaseModel]) -> Answer:
    """`call`'s answer, run with secrets derived for `attempt`; or the answer stored for it.

    `call` must pass its answer to the `Keep` it is given inside the transaction that makes
    its effect. Blocking: run in a thread. `Conflict` when the key was used for another
    request, or its first request is still running.
    """
    claimed = _claim(core, attempt)
    if isinstance(claimed, Answer):
        return claimed
    try:
        body = call(claimed.secrets, claimed.keep).model_dump_json()
    except BaseException:
        with contextlib.suppress(Exception):  # else the claim is abandoned, and taken later
            claimed.release(core)
        raise
    if claimed.kept is None:
        raise RuntimeError(f"{attempt.route} did not keep its answer for its Idempotency-Key")
    return Answer(body, replayed=False)


class _Claim:
    """The right to run an attempt: its row, unanswered, holding this claim's salt."""

    def __init__(self, attempt: Attempt, salt: str) -> None:
        self.attempt = attempt
        self.salt = salt
        self.secrets = _DerivedSecrets(attempt, salt)
        self.kept: str | None = None

    def _ours(self) -> ColumnElement[bool]:
        return (
            (table.c.id == self.attempt.id) & (table.c.salt == self.salt) & table.c.answer.is_(None)
        )

    def keep(self, conn: Connection, answer: BaseModel) -> None:
        """Store `answer` in the caller's transaction; `Conflict` (rolling it back) when the
        claim was taken over as abandoned meanwhile."""
        body = answer.model_dump_json()
        done = conn.execute(
            update(table)
            .where(self._ours())
            .values(answer=self.secrets.seal(body), expires_at=now() + KEEP_S)
        )
        if done.rowcount != 1:
            raise _in_use()
        self.kept = body

    def release(self, core: Core) -> None:
        """Give the key back after a failed request (none to give once its answer committed)."""
        with core.db.write() as conn:
            conn.execute(delete(table).where(self._ours()))


def _claim(core: Core, attempt: Attempt) -> Answer | _Claim:
    """The stored answer, or the right to run the request (its row, unanswered, is ours)."""
    t = now()
    with core.db.write() as conn:
        conn.execute(delete(table).where(table.c.expires_at <= t))
        row = conn.execute(select(table).where(table.c.id == attempt.id)).first()
        if row is None:
            salt = secrets.token_hex(16)
            try:
                conn.execute(
                    insert(table).values(
                        id=attempt.id,
                        request_sha256=attempt.request_sha256,
                        salt=salt,
                        created_at=t,
                        expires_at=t + KEEP_S,
                    )
                )
            except IntegrityError:  # another process inserted it first (PostgreSQL)
                raise _in_use() from None
            return _Claim(attempt, salt)
        if row.request_sha256 != attempt.request_sha256:
            raise Conflict(
                "this Idempotency-Key was already used for a different request; "
                "send a new key with each new request",
                error="idempotency_key_reused",
            )
        if row.answer is not None:
            return Answer(_DerivedSecrets(attempt, row.salt).unseal(row.answer), replayed=True)
        if row.created_at > t - _ABANDONED_S:
            raise _in_use()
        # Run it again, as new: with a new salt, so no secret of the dead run comes back.
        salt = secrets.token_hex(16)
        taken = conn.execute(
            update(table)
            .where(
                table.c.id == attempt.id,
                table.c.answer.is_(None),
                table.c.created_at == row.created_at,
            )
            .values(salt=salt, created_at=t, expires_at=t + KEEP_S)
        )
        if taken.rowcount != 1:
            raise _in_use()
        return _Claim(attempt, salt)


def _in_use() -> Conflict:
    return Conflict(
        "the first request with this Idempotency-Key is still being processed; "
        "retry in a few seconds to get its answer",
        error="idempotency_key_in_use",
    )
