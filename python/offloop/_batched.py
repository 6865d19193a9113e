"""offloop.batched: coalesce concurrent calls of a function over a list."""

import operator as _operator

from . import _core

#: The most calls one run may serve by default.
DEFAULT_MAX_BATCH = 64
_MAX_BATCH_LIMIT = 4096


def batched(fn=None, /, *, max_batch=DEFAULT_MAX_BATCH):
    """Wrap ``fn(list_of_items) -> list_of_results`` as an awaitable
    per-item call whose concurrent calls share one ``fn`` call.

    ``offloop.batched(fn)``, ``@offloop.batched`` or
    ``@offloop.batched(max_batch=16)``; see :class:`Batched`.
    """
    if fn is None:
        return lambda fn: Batched(fn, max_batch=max_batch)
    return Batched(fn, max_batch=max_batch)


class Batched:
    """Wrap ``fn(list_of_items) -> list_of_results`` as an awaitable
    per-item call whose concurrent calls share one ``fn`` call.

    ``await f(x)`` queues ``x`` on offloop's pool and returns ``fn``'s
    result for it.  When a worker takes such a call, it also takes every
    call of the same wrapper waiting in the queue (up to ``max_batch``, and
    up to ``offloop.configure(max_batch=...)``) and calls ``fn`` once with
    their items, in call order; each caller gets its own element of the
    returned sequence.  Nothing waits for a batch to fill: a call that
    finds no companion runs at once, alone.  ``f.blocking(x)`` is the
    blocking twin (Flask, Celery, scripts); its calls coalesce with the
    awaitable ones.

    ``fn`` runs on a worker with the GIL taken, like :func:`offloop.run`:
    it pays off for functions that release the GIL themselves (numpy, a
    model's ``predict``, an encoder).  It runs without the callers'
    contextvars, since one call serves many callers.  If it raises, every
    call of that batch raises that exception; if it returns a sequence of
    another length, every call raises ``ValueError``.  A call cancelled
    while queued is never passed to ``fn``; one cancelled after its batch
    started has its result discarded.

    Parameters
    ----------
    fn : callable
        Takes a list of items, returns a sequence of as many results.
    max_batch : int, keyword-only
        The most items one ``fn`` call receives (1 to 4096, default 64).
    """

    __slots__ = ("fn", "max_batch", "__weakref__")

    def __init__(self, fn, *, max_batch=DEFAULT_MAX_BATCH):
        if not callable(fn):
            raise TypeError("batched(): fn must be callable, not "
                            f"{type(fn).__name__}")
        try:
            if isinstance(max_batch, bool):
                raise TypeError
            max_batch = _operator.index(max_batch)
        except TypeError:
            raise TypeError("batched(): max_batch must be an int, not "
                            f"{type(max_batch).__name__}") from None
        if not 1 <= max_batch <= _MAX_BATCH_LIMIT:
            raise ValueError("batched(): max_batch must be between 1 and "
                             f"{_MAX_BATCH_LIMIT}, got {max_batch!r}")
        self.fn = fn
        self.max_batch = max_batch

    def __call__(self, item):
        """Queue one item; return an asyncio future of its result."""
        return _core._run_batched(self, self.fn, self.max_batch, item)

    def blocking(self, item):
        """Queue one item and wait (GIL released) for its result."""
        return _core._run_batched_blocking(self, self.fn, self.max_batch,
                                           item)

    def __repr__(self):
        return f"offloop.Batched({self.fn!r}, max_batch={self.max_batch})"
