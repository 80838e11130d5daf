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
    Column("created_at", Double, nullable=False),
)

rounds = Table(
    "rounds",
    metadata,
    Column("federation_id", String(32), ForeignKey("federations.id"), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("status", String(16), nullable=False),  # open | aggregating | closed
    Column("base_version", String(64), nullable=False),
    Column("result_version", String(64)),
    Column("received", Integer, nullable=False, default=0),
    Column("revision", BigInteger, nullable=False),
    Column("bytes_in", BigInteger, nullable=False, default=0),
    Column("bytes_out", BigInteger, nullable=False, default=0),
    Column("opened_at", Double, nullable=False),
    Column("deadline_at", Double, nullable=False),
    Column("aggregation_started_at", Double),
    Column("closed_at", Double),
    Column("aggregation_seconds", Double),
    Column("closed_by", String(16)),  # quorum | deadline
)
Index("ix_rounds_status_deadline", rounds.c.status, rounds.c.deadline_at)

clients = Table(
    "clients",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("federation_id", String(32), ForeignKey("federations.id"), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", Double, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("revoked_at", Double),
)

enrollment_tokens = Table(
    "enrollment_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("federation_id", String(32), ForeignKey("federations.id"), nullable=False),
    Column("uses_left", Integer, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("created_at", Double, nullable=False),
)

# Tables of their own (not columns), so databases created before them gain them through
# create_all. A revoked enrollment token also has uses_left 0, so registration refuses it in
# the same conditional update as a spent one; this row says why.
enrollment_token_revocations = Table(
    "enrollment_token_revocations",
    metadata,
    Column("token_hash", String(64), ForeignKey("enrollment_tokens.token_hash"), primary_key=True),
    Column("revoked_at", Double, nullable=False),
)

# A client's API key before it rotated its own (services/access.py): still valid until the new
# key is first used or `expires_at`, so a rotation whose answer was lost can be retried with it.
previous_keys = Table(
    "previous_keys",
    metadata,
    Column("client_id", String(32), ForeignKey("clients.id"), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("expires_at", Double, nullable=False),
)

updates = Table(
    "updates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("federation_id", String(32), ForeignKey("federations.id"), nullable=False),
    Column("round", Integer, nullable=False),
    Column("client_id", String(32), ForeignKey("clients.id"), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("num_examples", BigInteger, nullable=False),
    Column("metrics", Text, nullable=False),
    Column("received_at", Double, nullable=False),
    UniqueConstraint("federation_id", "round", "client_id", name="uq_update_per_client_round"),
)

# Updates a round's aggregation left out, and why (a non-finite aggregate: services/rounds.py).
# A table of its own, so databases created before it gain it through create_all.
exclusions = Table(
    "exclusions",
    metadata,
    Column("federation_id", String(32), ForeignKey("federations.id"), primary_key=True),
    Column("round", Integer, primary_key=True),
    Column("client_id", String(32), ForeignKey("clients.id"), primary_key=True),
    Column("reason", Text, nullable=False),
)

# A client's accuracy of one global version on its validation split, most often the final one
# (the updates carry that of the version they trained from). A table of its own, so databases
# created before it gain it through create_all.
evaluations = Table(
    "evaluations",
    metadata,
    Column("federation_id", String(32), ForeignKey("federations.id"), primary_key=True),
    Column("client_id", String(32), ForeignKey("clients.id"), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("round", Integer, nullable=False),
    Column("val_accuracy", Double, nullable=False),
    Column("val_examples", BigInteger, nullable=False),
    Column("received_at", Double, nullable=False),
)

# Central differential privacy (services/privacy.py): the sample rate each closed round was
# accounted at and the federation's ε once it closed. Tables of their own, so databases created
# before them gain them through create_all.
privacy_ledger = Table(
    "privacy_ledger",
    metadata,
    Column("federation_id", String(32), ForeignKey("federations.id"), primary_key=True),
    Column("round", Integer, primary_key=True),
    Column("sample_rate", Double, nullable=False),
    Column("epsilon", Double, nullable=False),
)

# Why a federation completed before its last round (privacy_budget); no row: after its last.
completions = Table(
    "completions",
    metadata,
    Column("federation_id", String(32), ForeignKey("federations.id"), primary_key=True),
    Column("round", Integer, nullable=False),
    Column("reason", String(32), nullable=False),
)

# Global state after each round (0 = initial) and the strategy's server state beside it.
state_versions = Table(
    "state_versions",
    metadata,
    Column("federation_id", String(32), ForeignKey("federations.id"), primary_key=True),
    Column("round", Integer, primary_key=True),
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
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
)
Index("ix_idempotency_keys_expires_at", idempotency_keys.c.expires_at)

# Who aggregates a round now (services/leases.py): an owner and an expiry renewed by heartbeat.
# A replica that dies stops renewing and any other takes the round over once it expires; a
# failed attempt sets `retry_at` (backoff) before anyone tries again.
round_leases = Table(
    "round_leases",
    metadata,
    Column("federation_id", String(32), ForeignKey("federations.id"), primary_key=True),
    Column("round", Integer, primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("retry_at", Double, nullable=False),
    Column("attempts", Integer, nullable=False),
)

# Every aggregation attempt of a round, kept for the history: who, when, how it ended.
aggregation_attempts = Table(
    "aggregation_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("federation_id", String(32), ForeignKey("federations.id"), nullable=False),
    Column("round", Integer, nullable=False),
    Column("number", Integer, nullable=False),
    Column("owner", String(128), nullable=False),
    Column("started_at", Double, nullable=False),
    Column("ended_at", Double),
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
    Column("created_at", Double, nullable=False),
    Column("revoked_at", Double),  # null while valid
)

# Secure aggregation (services/secagg.py): one row per secure round, the phase it is in and
# the sets each phase fixed (JSON lists of client ids). `attempt` grows when a phase cannot
# go on (too few clients left): the protocol restarts with fresh keys.
secagg_rounds = Table(
    "secagg_rounds",
    metadata,
    Column("federation_id", String(32), ForeignKey("federations.id"), primary_key=True),
    Column("round", Integer, primary_key=True),
    Column("attempt", Integer, nullable=False),
    Column("phase", String(16), nullable=False),  # advertise | share | input | unmask | done
    Column("deadline_at", Double, nullable=False),
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
    Column("federation_id", String(32), ForeignKey("federations.id"), primary_key=True),
    Column("round", Integer, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("client_id", String(32), primary_key=True),
    # keys | shares | input | unmask | complaint:<accused>
    Column("step", String(48), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("received_at", Double, nullable=False),
)

# The encrypted shares routed from one client to another (hex of nonce || AES-GCM ciphertext).
secagg_shares = Table(
    "secagg_shares",
    metadata,
    Column("federation_id", String(32), ForeignKey("federations.id"), primary_key=True),
    Column("round", Integer, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("sender", String(32), primary_key=True),
    Column("recipient", String(32), primary_key=True),
    Column("ciphertext", Text, nullable=False),
)
