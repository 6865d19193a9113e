"""The bridge: jobs reach the pool and their futures resolve on the loop."""

import asyncio
import os
import threading

import pytest

import offloop
from offloop import _testing


async def test_noop_resolves_to_none(loop):
    assert await _testing.noop() is None


async def test_spin_returns_its_checksum(loop):
    assert await _testing.spin(12345) == _testing.spin_reference(12345)


async def test_fail_raises_runtime_error_with_message(loop):
    with pytest.raises(RuntimeError, match="^boom$"):
        await _testing.fail("boom")


async def test_future_is_an_asyncio_future_of_the_running_loop(loop):
    fut = _testing.noop()
    assert isinstance(fut, asyncio.Future)
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    await fut


async def test_future_methods_behave_as_asyncio_futures(loop):
    ok, failing = _testing.noop(), _testing.fail("boom")
    seen = []
    ok.add_done_callback(seen.append, context=None)
    failing.add_done_callback(seen.append)
    failing.add_done_callback(print)
    assert failing.remove_done_callback(print) == 1
    assert not ok.done() and not ok.cancelled()
    with pytest.raises(asyncio.InvalidStateError):
        ok.result()
    await asyncio.gather(ok, failing, return_exceptions=True)
    await asyncio.sleep(0)  # done callbacks run at the next turn
    assert ok.done() and ok.result() is None and ok.exception() is None
    assert isinstance(failing.exception(), RuntimeError)
    with pytest.raises(RuntimeError, match="boom"):
        failing.result()
    assert failing.get_loop() is loop
    assert sorted(map(id, seen)) == sorted([id(ok), id(failing)])


def test_future_type_owns_the_methods_asyncio_calls_per_future():
    # The interpreter specialises fut.done() & co. only for a descriptor of
    # the object's exact type; inherited ones take the generic path.
    own = vars(offloop.Future)
    for name in ("done", "cancelled", "result", "exception", "get_loop",
                 "add_done_callback", "remove_done_callback", "cancel"):
        assert own[name].__objclass__ is offloop.Future, name


async def test_gather_of_many_jobs_returns_every_result_in_order(loop):
    ns = list(range(2000))
    results = await asyncio.gather(*(_testing.spin(n) for n in ns))
    assert results == [_testing.spin_reference(n) for n in ns]


async def test_one_wakeup_resolves_every_job_finished_since_the_last(loop):
    before = offloop.stats()
    futs = [_testing.noop() for _ in range(5000)]
    await asyncio.sleep(0)  # the tick's kick wakes the workers
    # The loop thread blocks (GIL released) while every job finishes, so
    # all 5,000 completions wait on the port together.
    assert _testing.wait_idle(10)
    await asyncio.gather(*futs)
    after = offloop.stats()
    wakeups = after["wakeups"] - before["wakeups"]
    resolved = after["resolved"] - before["resolved"]
    assert resolved == 5000
    # One wake-up for the lot, plus at most one for jobs that a spinning
    # worker finished while this loop was still submitting.
    assert wakeups <= 2


async def test_loop_runs_while_every_worker_is_busy(loop):
    threads = offloop.stats()["threads"]
    sleepers = [_testing.sleep(30) for _ in range(threads)]
    async with asyncio.timeout(10):
        while offloop.stats()["running"] < threads:
            await asyncio.sleep(0)
    # With every worker inside a job, the loop keeps running Python code:
    # workers do not hold the GIL.
    ticks = 0
    for _ in range(200):
        await asyncio.sleep(0)
        ticks += 1
    assert ticks == 200
    assert offloop.stats()["running"] == threads
    for s in sleepers:
        s.cancel()
    await asyncio.gather(*sleepers, return_exceptions=True)


async def test_stats_add_up_once_nothing_is_in_flight(loop):
    await asyncio.gather(_testing.noop(), _testing.spin(10),
                         _testing.fail("x"), return_exceptions=True)
    # A worker hands a job to the port before it leaves the running set,
    # so a future can resolve a moment before `running` drops.
    assert await asyncio.to_thread(_testing.wait_idle, 10)
    s = offloop.stats()
    for key in ("threads", "queued", "running", "completed", "failed",
                "cancelled", "dropped", "wakeups", "resolved", "submitted"):
        assert isinstance(s[key], int), key
    assert s["queued"] == 0 and s["running"] == 0
    assert s["submitted"] == (s["completed"] + s["failed"] + s["cancelled"]
                              + s["dropped"] - s["inline"])


def _recording(loop_class):
    """A loop class that records the thread of every call_soon: a future
    resolved off its loop's thread would schedule its callbacks from
    there."""
    class Recording(loop_class):
        def call_soon(self, callback, *args, context=None):
            self.call_soon_threads.add(threading.get_ident())
            return super().call_soon(callback, *args, context=context)

    return Recording


def _loop_thread(index, n, out, errors):
    """A thread running its own loop, submitting n jobs at once."""
    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
        futs = [_testing.spin(index + i % 1000) for i in range(n)]
        ran_on = set()
        for f in futs:
            f.add_done_callback(lambda _f: ran_on.add(threading.get_ident()))
        results = await asyncio.gather(*futs)
        await asyncio.sleep(0)  # let the last done callbacks run
        out[index] = (results, ran_on, loop.call_soon_threads)

    if index % 2:
        uvloop = pytest.importorskip("uvloop")
        loop = _recording(uvloop.Loop)()
    else:
        loop = _recording(asyncio.SelectorEventLoop)()
    loop.call_soon_threads = set()
    try:
        loop.run_until_complete(main())
    except BaseException as exc:  # brought back to the main thread
        errors.append(exc)
    finally:
        loop.close()
    out[index] += (threading.get_ident(),)


def test_eight_loops_in_eight_threads_each_resolve_their_own_futures():
    n = 10_000
    out, errors = {}, []
    threads = [threading.Thread(target=_loop_thread, args=(i, n, out, errors))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    for i in range(8):
        results, ran_on, call_soon_threads, me = out[i]
        assert ran_on == {me}
        assert call_soon_threads == {me}
        expected = [_testing.spin_reference(i + k) for k in range(1000)]
        assert results == [expected[k % 1000] for k in range(n)]


def test_calling_without_a_running_loop_raises_and_queues_nothing():
    before = offloop.stats()["submitted"]
    with pytest.raises(RuntimeError, match="no running event loop"):
        _testing.noop()
    assert offloop.stats()["submitted"] == before


def test_core_never_includes_python_h():
    root = os.path.join(os.path.dirname(__file__), "..", "src")
    for part in ("core", "kernels"):
        folder = os.path.join(root, part)
        for name in os.listdir(folder):
            with open(os.path.join(folder, name)) as f:
                text = f.read()
            assert "#include <Python.h>" not in text, name
            assert "#include \"Python.h\"" not in text, name
            assert "PyObject" not in text, name
