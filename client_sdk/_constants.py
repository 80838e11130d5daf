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

# Retries: connection errors, 408, 429 and 5xx; capped, jittered exponential backoff.
DEFAULT_MAX_RETRIES = 6
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 10.0
# A Retry-After longer than this is ignored in favour of our own backoff.
MAX_RETRY_AFTER_S = 60.0
# Each delay is scaled by a factor drawn from [1 - JITTER, 1].
RETRY_JITTER = 0.25
RETRYABLE_STATUSES = frozenset({408, 429})

# Transfers.
CHUNK_SIZE = 1 << 20
USER_AGENT = "fedtune-client/0.1"
