"""Fault injection for a test's server process, which loads it with this directory on its
PYTHONPATH (see `faulty_env` in test_crash_recovery.py). Python imports `sitecustomize` at start-up, before the server runs.

FAULT_AGGREGATION_DELAY_S: seconds each aggregation sleeps once its round is `aggregating`,
so a test can kill the process mid-aggregation.
"""

from __future__ import annotations

import os
import time

_delay = float(os.environ.get("FAULT_AGGREGATION_DELAY_S", "0"))
if _delay > 0:
    from aggregator_service.services import runner

    runner.before_aggregation.append(lambda _fid, _number: time.sleep(_delay))
