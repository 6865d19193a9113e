"""Native jobs that exist to test and benchmark offloop's bridge.

Not a public API.  Each call is awaitable; ``blocking.<name>`` is its
blocking twin.

- ``noop()``: does nothing.
- ``spin(iterations)``: ``iterations`` steps of a 64-bit LCG in C, started
  from ``iterations``; returns the final state (see :func:`spin_reference`).
- ``sleep(seconds)``: sleeps in C, checking for cancellation every 1 ms.
- ``fail(message)``: completes with ``RuntimeError(message)``.
- ``live_jobs()``: jobs allocated and not yet released (leak checks).
- ``wait_idle(timeout)``: waits until no job is queued or running.
"""

import operator as _operator
import types as _types

from ._core import fail, live_jobs, noop, sleep, spin, wait_idle
from . import _core

__all__ = ["blocking", "fail", "live_jobs", "noop", "sleep", "spin",
           "spin_reference", "wait_idle"]

blocking = _types.SimpleNamespace(
    noop=_core.noop_blocking,
    spin=_core.spin_blocking,
    sleep=_core.sleep_blocking,
    fail=_core.fail_blocking,
)

_MASK = (1 << 64) - 1


def spin_reference(iterations: int) -> int:
    """What ``spin(iterations)`` returns, computed in Python."""
    iterations = _operator.index(iterations)
    x = iterations & _MASK
    for _ in range(iterations):
        x = (x * 6364136223846793005 + 1442695040888963407) & _MASK
    return x
