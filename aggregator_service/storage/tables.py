"""The schema (SQLAlchemy Core, portable between SQLite and PostgreSQL).

Times are stored as UNIX seconds (double) so comparisons are plain arithmetic
on every backend; JSON travels as text.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# The largest value an Integer column holds on every backend (PostgreSQL's INTEGER is 32-bit):
# a larger round number or threshold matches no row, so it is never sent to the database.
INT_MAX = 2**31 - 1


def _federation_id(*, primary_key: bool = False) -> Column[str]:
    """The federation a row belongs to."""
    return Column(
        "federation_id",
        String(32),
        ForeignKey("federations.id"),
        primary_key=primary_key,
        nullable=False,
    )


def _client_id(*, primary_key: bool = False) -> Column[str]:
    """The client a row belongs to."""
    return Column(
        "client_id", String(32), ForeignKey("clients.id"), primary_key=primary_key, nullable=False
    )


def _round(*, primary_key: bool = False) -> Column[int]:
    """A round's number within its federation."""
    return Column("round", Integer, primary_key=primary_key, nullable=False)


def _round_key() -> tuple[Column[str], Column[int]]:
    """The primary key of a table with one row per federation and round."""
    return _federation_id(primary_key=True), _round(primary_key=True)


def _time(name: str, *, nullable: bool = False) -> Column[float]:
    """A time in UNIX seconds, required unless `nullable`."""
    return Column(name, Double, nullable=nullable)


federations = Table(
    "federations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("spec", Text, nullable=False),
    Column("status", String(16), nullable=False),  # running | completed
    Column("current_round", Integer, nullable=False),
    Column("manifest", Text, nullable=False),
    Column("base_fingerprint", String(64), nullable=False),
    Column("base_digest", String(64)),  # null when base_source is local
    Column("initial_version", String(64), nullable=False),
    Column("trainable_params", BigInteger, nullable=False),
    Column("total_params", BigInteger, nullable=False),
    _time("created_at"),
)

rounds = Table(
    "rounds",
    metadata,
    _federation_id(primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("status", String(16), nullable=False),  # open | aggregating | closed
    Column("base_version", String(64), nullable=False),
    Column("result_version", String(64)),
    Column("received", Integer, nullable=False, default=0),
    Column("revision", BigInteger, nullable=False),
    Column("bytes_in", BigInteger, nullable=False, default=0),
    Column("bytes_out", BigInteger, nullable=False, default=0),
    _time("opened_at"),
    _time("deadline_at"),
    _time("aggregation_started_at", nullable=True),
    _time("closed_at", nullable=True),
    Column("aggregation_seconds", Double),
    Column("closed_by", String(16)),  # quorum | deadline
)
Index("ix_rounds_status_deadline", rounds.c.status, rounds.c.deadline_at)

clients = Table(
    "clients",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    _federation_id(),
    Column("key_hash", String(64), nullable=False, unique=True),
    _time("created_at"),
    Column("revoked", Boolean, nullable=False, default=False),
    _time("revoked_at", nullable=True),
)

enrollment_tokens = Table(
    "enrollment_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    _federation_id(),
    Column("uses_left", Integer, nullable=False),
    _time("expires_at"),
    _time("created_at"),
)

# Tables of their own (not columns), so databases created before them gain them through
# create_all. A revoked enrollment token also has uses_left 0, so registration refuses it in
# the same conditional update as a spent one; this row says why.
enrollment_token_revocations = Table(
    "enrollment_token_revocations",
    metadata,
    Column("token_hash", String(64), ForeignKey("enrollment_tokens.token_hash"), primary_key=True),
    _time("revoked_at"),
)

# A client's API key before it rotated its own (services/access.py): still valid until the new
# key is first used or `expires_at`, so a rotation whose answer was lost can be retried with it.
previous_keys = Table(
    "previous_keys",
    metadata,
    _client_id(primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    _time("expires_at"),
)

updates = Table(
    "updates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _federation_id(),
    _round(),
    _client_id(),
    Column("sha256", String(64), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("num_examples", BigInteger, nullable=False),
    Column("metrics", Text, nullable=False),
    _time("received_at"),
    UniqueConstraint("federation_id", "round", "client_id", name="uq_update_per_client_round"),
)

# Updates a round's aggregation left out, and why (a non-finite aggregate: services/rounds.py).
# A table of its own, so databases created before it gain it through create_all.
exclusions = Table(
    "exclusions",
    metadata,
    *_round_key(),
    _client_id(primary_key=True),
    Column("reason", Text, nullable=False),
)

# A client's accuracy of one global version on its validation split, most often the final one
# (the updates carry that of the version they trained from). A table of its own, so databases
# created before it gain it through create_all.
evaluations = Table(
    "evaluations",
    metadata,
    _federation_id(primary_key=True),
    _client_id(primary_key=True),
    Column("version", String(64), primary_key=True),
    _round(),
    Column("val_accuracy", Double, nullable=False),
    Column("val_examples", BigInteger, nullable=False),
    _time("received_at"),
)

# Central differential privacy (services/privacy.py): the sample rate each closed round was
# accounted at and the federation's ε once it closed. Tables of their own, so databases created
# before them gain them through create_all.
privacy_ledger = Table(
    "privacy_ledger",
    metadata,
    *_round_key(),
    Column("sample_rate", Double, nullable=False),
    Column("epsilon", Double, nullable=False),
)

# Why a federation completed before its last round (privacy_budget); no row: after its last.
completions = Table(
    "completions",
    metadata,
    _federation_id(primary_key=True),
    _round(),
    Column("reason", String(32), nullable=False),
)

# Global state after each round (0 = initial) and the strategy's server state beside it.
state_versions = Table(
    "state_versions",
    metadata,
    *_round_key(),
    Column("digest", String(64), nullable=False),
    Column("server_state_digest", String(64)),
)
Index("ix_state_versions_digest", state_versions.c.federation_id, state_versions.c.digest)

# The answers to POSTs sent with an Idempotency-Key, replayed to retries for a day
# (services/idempotency.py). No key, credential or shown-once secret is stored in the clear.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("id", String(64), primary_key=True),  # sha256 over caller, route and key
    Column("request_sha256", String(64), nullable=False),
    Column("salt", String(32), nullable=False),  # with the credential, derives the secrets
    Column("answer", Text),  # null while the first request runs
    _time("created_at"),
    _time("expires_at"),
)
Index("ix_idempotency_keys_expires_at", idempotency_keys.c.expires_at)

# Who aggregates a round now (services/leases.py): an owner and an expiry renewed by heartbeat.
# A replica that dies stops renewing and any other takes the round over once it expires; a
# failed attempt sets `retry_at` (backoff) before anyone tries again.
round_leases = Table(
    "round_leases",
    metadata,
    *_round_key(),
    Column("owner", String(128), nullable=False),
    _time("expires_at"),
    _time("retry_at"),
    Column("attempts", Integer, nullable=False),
)

# Every aggregation attempt of a round, kept for the history: who, when, how it ended.
aggregation_attempts = Table(
    "aggregation_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _federation_id(),
    _round(),
    Column("number", Integer, nullable=False),
    Column("owner", String(128), nullable=False),
    _time("started_at"),
    _time("ended_at", nullable=True),
    Column("outcome", String(16)),  # closed | failed | reopened | superseded; null while running
    Column("error", Text),
)
Index(
    "ix_aggregation_attempts_round",
    aggregation_attempts.c.federation_id,
    aggregation_attempts.c.round,
)

# Read-only tokens for the dashboard (services/viewers.py), issued by the admin: only their
# sha256 is stored, the token is shown once. A table of its own, so databases created before it
# gain it through create_all.
viewer_tokens = Table(
    "viewer_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    _time("created_at"),
    _time("revoked_at", nullable=True),  # null while valid
)

# Secure aggregation (services/secagg/): one row per secure round, the phase it is in and
# the sets each phase fixed (JSON lists of client ids). `attempt` grows when a phase cannot
# go on (too few clients left): the protocol restarts with fresh keys.
secagg_rounds = Table(
    "secagg_rounds",
    metadata,
    *_round_key(),
    Column("attempt", Integer, nullable=False),
    Column("phase", String(16), nullable=False),  # advertise | share | input | unmask | done
    _time("deadline_at"),
    Column("cohort", Text),  # who advertised keys (phase share on)
    Column("u1", Text),  # who shared keys (phase input on)
    Column("u2", Text),  # whose masked input counts (phase unmask on)
    Column("secrets", Text),  # the rebuilt b of the survivors and s_sk of the dropped (done)
    Column("events", Text, nullable=False),  # JSON list of what went wrong, for the history
)

# What each client sent in each step of an attempt: its body's sha256 (the same body again is
# a repeat, a different one a conflict) and what the service keeps of it (JSON).
secagg_steps = Table(
    "secagg_steps",
    metadata,
    *_round_key(),
    Column("attempt", Integer, primary_key=True),
    _client_id(primary_key=True),
    # keys | shares | input | unmask | complaint:<accused>
    Column("step", String(48), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    _time("received_at"),
)

# The encrypted shares routed from one client to another (hex of nonce || AES-GCM ciphertext).
secagg_shares = Table(
    "secagg_shares",
    metadata,
    *_round_key(),
    Column("attempt", Integer, primary_key=True),
    Column("sender", String(32), primary_key=True),
    Column("recipient", String(32), primary_key=True),
    Column("ciphertext", Text, nullable=False),
)
