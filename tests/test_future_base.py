"""offloop's Future against a plain asyncio.Future: every method of the base
behaves the same on both, on every state a future can be in.

Regression: on CPython 3.12 and 3.13 offloop's Future carried copies of the
base's METH_METHOD entries (exception, get_loop, add_done_callback,
remove_done_callback), which then read _asyncio's module state from
offloop's module: exception() on a cancelled future raised TypeError, on a
pending one SystemError (src/module/future.c, DESIGN).  On 3.11 the base is
a static type and these passed before the fix too.
"""

import asyncio
import contextvars

import pytest

import offloop
from offloop import _core

KINDS = ["asyncio", "offloop"]


def make(kind, loop):
    if kind == "asyncio":
        return asyncio.Future(loop=loop)
    return _core.Future(loop=loop)


def outcome(call):
    """What a call did: ("ok", value) or ("raised", type, args); an
    exception returned is compared by type and args, not identity."""
    try:
        value = call()
    except BaseException as exc:  # CancelledError is a BaseException
        return ("raised", type(exc), exc.args)
    if isinstance(value, BaseException):
        return ("ok", type(value), value.args)
    return ("ok", value)


async def states(loop):
    """One future per state, for each kind: {state: {kind: future}}."""
    out = {}
    for kind in KINDS:
        pending = make(kind, loop)
        done = make(kind, loop)
        done.set_result(42)
        failed = make(kind, loop)
        failed.set_exception(ValueError("boom"))
        cancelled = make(kind, loop)
        cancelled.cancel("why")
        for name, fut in [("pending", pending), ("done", done),
                          ("failed", failed), ("cancelled", cancelled)]:
            out.setdefault(name, {})[kind] = fut
    return out


def settle(all_states):
    """Leave no exception unretrieved (the loop fixture would fail)."""
    for futs in all_states.values():
        for fut in futs.values():
            if fut.done() and not fut.cancelled():
                fut.exception()
            fut.cancel()


@pytest.mark.parametrize("method", ["result", "exception", "done",
                                    "cancelled"])
async def test_queries_match_the_base_in_every_state(loop, method):
    all_states = await states(loop)
    for state, futs in all_states.items():
        got = {kind: outcome(getattr(fut, method))
               for kind, fut in futs.items()}
        assert got["offloop"] == got["asyncio"], (state, got)
    settle(all_states)


async def test_get_loop_is_the_loop(loop):
    fut = make("offloop", loop)
    assert fut.get_loop() is loop
    fut.cancel()


async def test_setting_a_done_future_raises_like_the_base(loop):
    stop = {}
    for kind in KINDS:
        fut = make(kind, loop)
        fut.set_result(1)
        with pytest.raises(asyncio.InvalidStateError):
            fut.set_result(2)
        with pytest.raises(asyncio.InvalidStateError):
            fut.set_exception(ValueError())
        assert fut.cancel() is False
        # StopIteration: TypeError on some versions, a RuntimeError set as
        # the exception on others; the same on both kinds.
        fut = make(kind, loop)
        stop[kind] = (outcome(lambda: fut.set_exception(StopIteration)),
                      outcome(fut.exception) if fut.done() else None)
    assert stop["offloop"] == stop["asyncio"], stop


async def test_callbacks_on_done_and_pending_futures(loop):
    var = contextvars.ContextVar("var", default="unset")
    for kind in KINDS:
        seen = []
        ctx = contextvars.copy_context()
        ctx.run(var.set, kind)

        done = make(kind, loop)
        done.set_result(kind)
        # A done future schedules the callback at once, in the given
        # context: the path that reads asyncio's call_soon arguments.
        done.add_done_callback(lambda f: seen.append((f.result(), var.get())),
                               context=ctx)
        pending = make(kind, loop)

        def cb(f):
            seen.append(("never", None))

        pending.add_done_callback(cb)
        pending.add_done_callback(cb)
        assert pending.remove_done_callback(cb) == 2
        pending.add_done_callback(lambda f: seen.append(("late", var.get())))
        pending.set_result(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert seen == [(kind, kind), ("late", "unset")], kind


async def test_cancelled_job_future_raises_cancelled_error(loop):
    fut = offloop.run(lambda: None)
    assert isinstance(fut, _core.Future)
    assert fut.cancel("stop")
    with pytest.raises(asyncio.CancelledError):
        fut.exception()
    with pytest.raises(asyncio.CancelledError):
        fut.result()
    # gather over cancelled offloop futures reports them as the base does.
    res = await asyncio.gather(fut, return_exceptions=True)
    assert isinstance(res[0], asyncio.CancelledError)
