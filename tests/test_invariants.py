"""DESIGN invariants 1, 2 and 11, which no other file names; the index of
every invariant and its tests is tests/README.md.

1. Workers never hold the GIL: native jobs start, run and complete while
   the loop thread keeps the GIL in a pure-Python busy loop.
2. A future is touched only on its own loop's thread, with loops in
   several threads at once.
4. (on both loops; test_loops.py checks it on asyncio) the port's eventfd
   stays open while its loop lives and is gone once the loop is closed.
11. Inputs are borrowed, never copied: the job reads the caller's memory
    (a write made after the call shows in the result) and holds its
    export (resizing fails with BufferError) until it ends; outputs are
    new arrays the caller owns, or ``out=`` itself.
"""

import array
import asyncio
import os
import sys
import threading
import time

import numpy as np
import pytest

import offloop
import offloop._core
from offloop import _testing

from loop_kinds import LOOPS

BUSY_DEADLINE = 30  # seconds the GIL-holding loop waits for the workers


async def occupy_workers():
    """One long ``sleep`` job per worker, each running once this returns;
    cancel them to free the workers (a sleep polls its cancel flag)."""
    n = offloop.stats()["threads"]
    blockers = [_testing.sleep(60) for _ in range(n)]
    # Bounded poll: nothing signals "a worker took a job".
    async with asyncio.timeout(30):
        while offloop.stats()["running"] < n:
            await asyncio.sleep(0)
    return blockers


async def release(blockers):
    for b in blockers:
        b.cancel()
    for b in blockers:
        with pytest.raises(asyncio.CancelledError):
            await b


# ---- 1: workers never hold the GIL --------------------------------------


async def test_native_jobs_run_while_the_loop_thread_holds_the_gil(loop):
    """Jobs that cannot start before the busy loop does (every worker is
    taken) start, run and reach their port inside it (the pool's
    ``started`` and ``running`` counters, kept by the workers; the
    futures resolve later, on the loop).  The switch interval is raised
    so that the loop thread would not hand the GIL to a worker that asked
    for it: a worker needing the GIL would stall here."""
    blockers = await occupy_workers()
    threads = len(blockers)
    s0 = offloop.stats()
    spins = [_testing.spin(2_000_000 + i) for i in range(2 * threads)]
    rng = np.random.default_rng(1)
    m = rng.random((50_000, 64), dtype=np.float32)
    top = offloop.top_k(m[3], m, k=1)
    jobs = len(spins) + 1
    await asyncio.sleep(0)  # the loop tick that wakes the pool
    assert offloop.stats()["started"] == s0["started"]  # none can start
    before = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        # From here until the deadline this thread runs Python bytecode
        # only: no await, no call that releases the GIL.
        for b in blockers:
            b.cancel()
        deadline = time.monotonic() + BUSY_DEADLINE
        started = 0
        while time.monotonic() < deadline:
            s = offloop.stats()
            started = s["started"] - s0["started"]
            if started >= jobs and s["running"] == 0:
                break  # all started, and every job delivered to its port
    finally:
        sys.setswitchinterval(before)
    assert started >= jobs, f"{started} of {jobs} jobs started"
    assert s["running"] == 0, s
    assert await asyncio.gather(*spins) == [
        _testing.spin_reference(2_000_000 + i) for i in range(2 * threads)]
    _, indices = await top
    assert indices[0] == 3
    for b in blockers:
        assert b.cancelled()


# ---- 2: a future is touched only on its own loop's thread ---------------


def _recording(loop_class):
    """A loop class that records the thread of every call_soon: a future
    resolved, failed or cancelled off its loop's thread would schedule
    its callbacks from there."""
    class Recording(loop_class):
        def call_soon(self, callback, *args, context=None):
            self.call_soon_threads.add(threading.get_ident())
            return super().call_soon(callback, *args, context=context)

    return Recording


# Shared by the four loops' threads: their one-query top_k calls on it,
# and their calls of one batched wrapper, may share a run (coalescing).
SHARED_M = np.random.default_rng(9).random((20_000, 32), dtype=np.float32)
SHARED_BATCHED = offloop.batched(lambda items: [i * 2 for i in items])


def _every_kind_of_job(m, x, index):
    """One future of each kind the public API makes, some resolving, one
    failing, one cancelled while queued; some may be coalesced with other
    loops' jobs."""
    return {
        "coalesced_top_k": offloop.top_k(SHARED_M[index], SHARED_M, k=2),
        "batched": SHARED_BATCHED(index),
        "noop": _testing.noop(),
        "spin": _testing.spin(1000),
        "fail": _testing.fail("boom"),
        "run": offloop.run(sum, [1, 2, 3]),
        "top_k": offloop.top_k(m[:2], m, k=3),
        "similarities": offloop.cosine_similarities(m[0], m),
        "normalize": offloop.batch_normalize(x),
        "cosine": offloop.cosine_similarity(m[0], m[1]),
    }


def _loop_thread(kind, index, out, errors, start):
    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
        rng = np.random.default_rng(index)
        m = rng.random((20_000, 32), dtype=np.float32)
        x = rng.random((20_000, 32), dtype=np.float32)
        start.wait(30)  # every thread submits at the same moment
        ran_on, futs = set(), {}
        for rep in range(20):
            for name, fut in _every_kind_of_job(m, x, index).items():
                assert fut.get_loop() is loop
                fut.add_done_callback(
                    lambda _f: ran_on.add(threading.get_ident()))
                futs[name, rep] = fut
            doomed = _testing.sleep(60)
            doomed.add_done_callback(
                lambda _f: ran_on.add(threading.get_ident()))
            doomed.cancel()
            futs["cancelled", rep] = doomed
        results = await asyncio.gather(*futs.values(),
                                       return_exceptions=True)
        await asyncio.sleep(0)  # let the last done callbacks run
        for (name, _), res in zip(futs, results):
            if name == "fail":
                assert isinstance(res, RuntimeError), res
            elif name == "cancelled":
                assert isinstance(res, asyncio.CancelledError), res
            else:
                assert not isinstance(res, BaseException), (name, res)
        out[index] = (ran_on, loop.call_soon_threads)

    if kind == "uvloop":
        import uvloop
        loop_class = uvloop.Loop
    else:
        loop_class = asyncio.SelectorEventLoop
    loop = _recording(loop_class)()
    loop.call_soon_threads = set()
    try:
        loop.run_until_complete(main())
    except BaseException as exc:  # brought back to the main thread
        errors.append(exc)
    finally:
        loop.close()
    out[index] += (threading.get_ident(),)


@pytest.mark.parametrize("kind", LOOPS)
def test_futures_of_loops_in_four_threads_are_touched_only_there(kind):
    out, errors = {}, []
    start = threading.Barrier(4, timeout=30)
    threads = [threading.Thread(target=_loop_thread,
                                args=(kind, i, out, errors, start))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    for i in range(4):
        ran_on, call_soon_threads, me = out[i]
        assert ran_on == {me}
        assert call_soon_threads == {me}


# ---- 4: the eventfd outlives its reader, and no longer -----------------


def _eventfds():
    """The fds of the kind a port is: eventfds, or pipes in the
    OL_PORTABLE build (what macOS gets)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            if (target.startswith("pipe:") if offloop._core._portable
                    else target == "anon_inode:[eventfd]"):
                fds.add(int(name))
        except OSError:  # the listing's own fd, closed by now
            pass
    return fds


@pytest.mark.parametrize("kind", LOOPS)
def test_the_ports_eventfd_lives_as_long_as_its_loop(kind):
    if kind == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    async def one_job():
        await _testing.noop()

    factory().close()  # uvloop opens pipes of its own on first use
    offloop.stats()  # a sweep: ports of loops closed earlier are gone
    before = _eventfds()
    loop = factory()
    try:
        loop.run_until_complete(one_job())
        assert _eventfds() - before  # the port's, and uvloop's own
        offloop.stats()  # a sweep keeps an open loop's port
        loop.run_until_complete(one_job())  # still registered
    finally:
        loop.close()
    offloop.stats()  # the sweep that releases the closed loop's port
    assert _eventfds() - before == set()


# ---- 11: buffers borrowed, never copied; outputs the caller owns --------


async def test_a_job_reads_the_callers_memory_not_a_copy(loop):
    """Queued behind busy workers, the job sees a write the caller made
    after the call: it borrowed the buffers (array.array, memoryview of a
    bytearray, numpy) instead of copying them at the call."""
    n, d = 4_000, 32  # past the inline threshold: the job is queued
    q = array.array("f", [1.0] * d)
    m_arr = array.array("f", [0.0] * (n * d))
    m_arr[:d] = q  # row 0 is the best match at the call
    raw = bytearray(m_arr.tobytes())
    m_view = memoryview(raw).cast("f", (n, d))
    m_np = np.frombuffer(m_arr.tobytes(), np.float32).reshape(n, d).copy()
    blockers = await occupy_workers()
    try:
        futs = [offloop.top_k(q, memoryview(m_arr).cast("B").cast(
                    "f", (n, d)), k=1),
                offloop.top_k(q, m_view, k=1),
                offloop.top_k(q, m_np, k=1)]
        assert not any(f.done() for f in futs)
        # The jobs hold their exports: the owners cannot resize.
        with pytest.raises(BufferError):
            m_arr.append(0.0)
        with pytest.raises(BufferError):
            q.append(0.0)
        with pytest.raises(BufferError):
            m_view.release()  # the job holds an export of the view
        # Move the best match to row 7, in place.
        for i in range(d):
            m_arr[i] = -1.0
            m_arr[7 * d + i] = 1.0
        block = memoryview(raw).cast("f")
        block[:d] = array.array("f", [-1.0] * d)
        block[7 * d:8 * d] = array.array("f", [1.0] * d)
        block.release()
        m_np[0], m_np[7] = -1.0, 1.0
    finally:
        await release(blockers)
    for fut in futs:
        _, indices = await fut
        assert indices[0] == 7
    # Released once the jobs ended.
    m_arr.append(0.0)
    q.append(0.0)
    m_view.release()
    raw.extend(b"\0" * 4)


@pytest.mark.parametrize("blocking", [False, True],
                         ids=["awaited", "blocking"])
async def test_outputs_are_new_arrays_the_caller_owns_or_out(loop, blocking):
    async def call(name, *args, **kwargs):
        if blocking:
            return getattr(offloop.blocking, name)(*args, **kwargs)
        return await getattr(offloop, name)(*args, **kwargs)

    rng = np.random.default_rng(3)
    x = rng.random((30_000, 16), dtype=np.float32)
    x_before = x.copy()
    results = [await call("batch_normalize", x),
               await call("cosine_similarities", x[0], x),
               *(await call("top_k", x[:2], x, k=4))]
    for res in results:
        assert isinstance(res, np.ndarray)
        assert res.base is None and res.flags.owndata
        assert res.flags.writeable and res.flags.c_contiguous
        assert not np.shares_memory(res, x)
    np.testing.assert_array_equal(x, x_before)  # inputs are read only
    out = np.empty_like(x)
    assert await call("batch_normalize", x, out=out) is out
    np.testing.assert_array_equal(out, results[0])
    assert await call("batch_normalize", x, out=x) is x  # in place
    np.testing.assert_allclose(x, results[0], rtol=1e-6)
