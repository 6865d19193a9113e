"""offloop: run native work from asyncio.

Native jobs run on offloop's own C thread pool, with the GIL released.  Each
call returns an :class:`asyncio.Future` on the running loop, resolved through
one eventfd per loop: awaiting native work never blocks the loop.  Blocking
twins of every call live in :mod:`offloop.blocking`.

Example
-------
>>> import asyncio, hashlib, offloop
>>> async def main():
...     digest = await offloop.run(hashlib.sha256, b"x" * 10_000_000)
...     return digest.hexdigest()[:8]
>>> asyncio.run(main())
'...'
"""

import atexit as _atexit
import os as _os
import re as _re
from collections.abc import Callable as _Callable
from typing import ParamSpec as _ParamSpec
from typing import TypeVar as _TypeVar

from . import _core
from ._batched import Batched, batched
from ._build import get_cmake_dir, get_include
from ._core import Future, configure, stats
from ._core import (  # vector kernels: C entry points, no wrapper
    batch_normalize,
    cosine_similarities,
    cosine_similarity,
    top_k,
)
from ._quantized import QuantizedMatrix, quantize

__version__ = "0.1.0"
__all__ = ["Batched", "Future", "QuantizedMatrix", "batch_normalize", "batched",
           "blocking", "configure", "cosine_similarities", "cosine_similarity",
           "get_cmake_dir", "get_include", "quantize", "run", "stats",
           "top_k"]

#: Seconds interpreter exit waits for running jobs to stop.
SHUTDOWN_TIMEOUT = 2.0

_P = _ParamSpec("_P")
_T = _TypeVar("_T")


def _check_worker_priority(value: str | None) -> None:
    """Warn about an OFFLOOP_WORKER_PRIORITY the pool will not use.

    The rule is the core's (src/core/priority.c): unset or empty, "idle",
    or a nice increment from 0 to 19 with an optional "+".
    """
    # 0 to 19 by pattern, not int(): a hostile 5,000-digit value must
    # warn, not raise at import.
    if value in (None, "", "idle") or _re.fullmatch(r"\+?0*1?[0-9]", value):
        return
    import warnings

    warnings.warn(f"OFFLOOP_WORKER_PRIORITY={value!r} is neither 'idle' nor "
                  "a nice increment from 0 to 19: workers run at the "
                  "default priority (normal policy, the process's nice, "
                  "long time slice)", RuntimeWarning, stacklevel=2)


_check_worker_priority(_os.environ.get("OFFLOOP_WORKER_PRIORITY"))


def run(fn: _Callable[_P, _T], /, *args: _P.args,
        **kwargs: _P.kwargs) -> Future[_T]:
    """Call ``fn(*args, **kwargs)`` on offloop's pool; return a future.

    A faster drop-in for :func:`asyncio.to_thread`: the caller's contextvars
    are copied in, exceptions come back with their type and traceback, and
    cancelling the awaiting task cancels the call if it has not started
    (a call already running finishes, its result discarded).

    The worker takes the GIL to call ``fn``, so this pays off for callables
    that release it themselves: hashlib, zlib, numpy, most C extensions.

    Parameters
    ----------
    fn : callable
    *args, **kwargs
        Passed to ``fn``.

    Returns
    -------
    asyncio.Future
        Resolves to ``fn``'s return value, on the running loop.

    Raises
    ------
    TypeError
        If ``fn`` is not callable (at the call, nothing queued).
    RuntimeError
        If no event loop is running in this thread.
    """
    return _core.run(fn, *args, **kwargs)


def _shutdown() -> None:
    _core._shutdown(SHUTDOWN_TIMEOUT)


_atexit.register(_shutdown)

from . import blocking  # noqa: E402  (needs _core loaded)
