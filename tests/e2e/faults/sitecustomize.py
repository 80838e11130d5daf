"""Fault injection for a test's server process, which loads it with this directory on its
PYTHONPATH (see `faulty_env` in test_crash_recovery.py). Python imports `sitecustomize` at start-up, before the server runs.

Each fault hooks `runner.before_aggregation`, called in the aggregation thread once the round
is `aggregating` and its lease is held, before its inputs are read:

FAULT_AGGREGATION_DELAY_S: seconds each aggregation sleeps, so a test can kill the process
mid-aggregation.
FAULT_KILL_BEFORE_AGGREGATION=1: the process SIGKILLs itself, as a crash between accepting
the quorum-reaching update and aggregating.
FAULT_AGGREGATION_FAILURES=N: the first N aggregation attempts of this process raise.

FAULT_HOSTNAME: the host name this process reports (its lease owner names it), so that its
replicas on this machine take it for one on another host: they cannot see it die, and take
its work over only when its lease expires.
"""

from __future__ import annotations

import os
import signal
import socket
import time

_delay = float(os.environ.get("FAULT_AGGREGATION_DELAY_S", "0"))
_kill = os.environ.get("FAULT_KILL_BEFORE_AGGREGATION") == "1"
_failures = int(os.environ.get("FAULT_AGGREGATION_FAILURES", "0"))
_hostname = os.environ.get("FAULT_HOSTNAME", "")

if _hostname:
    socket.gethostname = lambda: _hostname

if _delay > 0 or _kill or _failures > 0:
    from aggregator_service.services import runner

    if _delay > 0:
        runner.before_aggregation.append(lambda _fid, _number: time.sleep(_delay))

    if _kill:
        runner.before_aggregation.append(lambda _fid, _number: os.kill(os.getpid(), signal.SIGKILL))

    if _failures > 0:
        _failed = [0]

        def _fail(_fid: str, number: int) -> None:
            if _failed[0] < _failures:
                _failed[0] += 1
                raise RuntimeError(f"injected aggregation failure {_failed[0]} of round {number}")

        runner.before_aggregation.append(_fail)
