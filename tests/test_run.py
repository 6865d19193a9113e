"""offloop.run: a faster drop-in for asyncio.to_thread."""

import asyncio
import contextvars
import gc
import hashlib
import sys
import threading
import traceback

import pytest

import offloop

request_id = contextvars.ContextVar("request_id", default=None)


def _add(a, b, *, scale=1):
    return (a + b) * scale


def _raise_value_error(message):
    raise ValueError(message)


async def test_run_passes_args_and_kwargs_and_returns_the_result(loop):
    assert await offloop.run(_add, 2, 3, scale=10) == 50


async def test_run_calls_on_another_thread(loop):
    assert await offloop.run(threading.get_ident) != threading.get_ident()


async def test_run_reraises_with_type_and_traceback(loop):
    with pytest.raises(ValueError, match="bad input") as info:
        await offloop.run(_raise_value_error, "bad input")
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "_raise_value_error" in frames


async def test_run_copies_the_callers_contextvars(loop):
    request_id.set("abc")

    def read_and_write():
        seen = request_id.get()
        request_id.set("changed in the worker")
        return seen

    assert await offloop.run(read_and_write) == "abc"
    assert request_id.get() == "abc"


async def test_run_of_a_gil_releasing_callable(loop):
    data = b"x" * 1_000_000
    digest = await offloop.run(hashlib.sha256, data)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_run_releases_its_references(loop):
    fn, arg = _add, object()
    gc.collect()
    before = sys.getrefcount(fn), sys.getrefcount(arg)
    assert await offloop.run(fn, 1, 2, scale=1) == 3
    assert await offloop.run(lambda x: x is arg, arg)
    try:
        # An awaited exception's frames linger in asyncio itself (as with
        # asyncio.to_thread); the blocking twin shows ours drop them.
        offloop.blocking.run(fn, arg, 1)
    except TypeError:
        pass
    gc.collect()
    assert (sys.getrefcount(fn), sys.getrefcount(arg)) == before


async def test_run_of_stop_iteration_still_resolves(loop):
    def stop():
        raise StopIteration

    # A future cannot hold StopIteration: up to 3.12 set_exception() raises
    # TypeError, from 3.13 it stores a RuntimeError instead.  The job's
    # future ends the way a plain future does.
    probe = loop.create_future()
    try:
        probe.set_exception(StopIteration())
        expected = type(probe.exception())
    except TypeError:
        expected = TypeError
    with pytest.raises(expected, match="StopIteration"):
        async with asyncio.timeout(10):
            await offloop.run(stop)


async def test_run_of_a_non_callable_raises_and_queues_nothing(loop):
    before = offloop.stats()["submitted"]
    with pytest.raises(TypeError, match="fn must be callable"):
        offloop.run(42)
    with pytest.raises(TypeError, match="fn"):
        offloop.run()
    assert offloop.stats()["submitted"] == before


async def test_many_runs_gathered(loop):
    results = await asyncio.gather(*(offloop.run(_add, i, 1)
                                     for i in range(2000)))
    assert results == [i + 1 for i in range(2000)]


async def test_blocking_run_inside_run_runs_inline_without_deadlock(loop):
    threads = offloop.stats()["threads"]

    def nested(i):
        return offloop.blocking.run(_add, i, 1)

    async with asyncio.timeout(20):
        results = await asyncio.gather(*(offloop.run(nested, i)
                                         for i in range(threads * 4)))
    assert results == [i + 1 for i in range(threads * 4)]


def test_blocking_run_without_a_loop():
    assert offloop.blocking.run(_add, 1, 2, scale=3) == 9
    with pytest.raises(ValueError, match="boom"):
        offloop.blocking.run(_raise_value_error, "boom")
