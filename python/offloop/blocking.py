"""Blocking twins of offloop's calls, for Flask, Celery and plain scripts.

Same names and arguments as the awaitable calls in :mod:`offloop`.  The
calling thread waits with the GIL released, so other Python threads run
meanwhile; it needs no event loop.  In the main thread, Ctrl-C cancels the
job and raises KeyboardInterrupt.  Called on an offloop worker (from inside
``offloop.run``), the job runs inline instead of waiting on the pool.
"""

from collections.abc import Callable as _Callable
from typing import ParamSpec as _ParamSpec
from typing import TypeVar as _TypeVar

from . import _core
from ._core import batch_normalize_blocking as batch_normalize
from ._core import cosine_similarities_blocking as cosine_similarities
from ._core import cosine_similarity_blocking as cosine_similarity
from ._core import top_k_blocking as top_k
from ._quantized import quantize_blocking as quantize

__all__ = ["batch_normalize", "cosine_similarities", "cosine_similarity",
           "quantize", "run", "top_k"]


_P = _ParamSpec("_P")
_T = _TypeVar("_T")


def run(fn: _Callable[_P, _T], /, *args: _P.args,
        **kwargs: _P.kwargs) -> _T:
    """Call ``fn(*args, **kwargs)`` on offloop's pool and return its result.

    Raises whatever ``fn`` raises, with its traceback; ``TypeError`` at the
    call if ``fn`` is not callable.
    """
    return _core.run_blocking(fn, *args, **kwargs)
