"""Every timeout, retry and transfer constant of the SDK, in one place."""

from __future__ import annotations

import httpx

# Timeouts (seconds). Reads get longer than connects: a state or base download
# may stall briefly on a busy aggregator without being dead.
DEFAULT_TIMEOUT = httpx.Timeout(timeout=60.0, connect=10.0)
# A long-poll is held by the server up to wait_s; the client waits this much longer.
LONG_POLL_MARGIN_S = 15.0
# The longest the server holds a long-poll (the API's own cap).
MAX_WAIT_S = 60

# Retries: connection errors, timeouts, 408, 429 and every 5xx (503 for a database outage,
# 507 for a full disk included) go on until DEFAULT_RETRY_FOR_S has passed since the first
# failure of a call, so a restart or an outage of minutes ends no participant.
DEFAULT_RETRY_FOR_S = 600.0
# No limit on the number of retries unless a caller sets one (the budget above still holds).
DEFAULT_MAX_RETRIES: int | None = None
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 30.0
# Each backoff delay is scaled by a factor drawn from [1 - JITTER, 1]. A `Retry-After` is
# waited as sent, clipped to the budget left.
RETRY_JITTER = 0.25
RETRYABLE_STATUSES = frozenset({408, 429})
# 409s that pass on their own: the first attempt with this Idempotency-Key (one that timed
# out on our side) is still running on the server; a retry soon gets its answer.
TRANSIENT_CONFLICTS = frozenset({"idempotency_key_in_use"})

# Transfers.
CHUNK_SIZE = 1 << 20
USER_AGENT = "fedtune-client/0.1"
