"""native_ext: C functions that run on offloop's pool, awaitable.

An example of offloop's C API (``offloop.h``).  Each function returns an
:class:`asyncio.Future` of the running loop; its blocking twin, in
:mod:`native_ext.blocking`, waits with the GIL released instead.

Example
-------
>>> import asyncio, native_ext
>>> asyncio.run(native_ext.sum_squares(3, 4))
25
"""

from . import _native
from ._native import (double, double_batched, live_contexts,
                      process_numbers, sum_squares)

__all__ = ["blocking", "double", "double_batched", "live_contexts",
           "process_numbers", "sum_squares"]

from . import blocking  # noqa: E402
