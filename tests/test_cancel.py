"""Cancelling the awaiting task cancels the job (DESIGN invariant 9), and
cancel/complete races never raise (invariant 3)."""

import asyncio
import random

import pytest

import offloop
from offloop import _testing


async def _occupy_every_worker():
    """Fill the pool with long sleeps; return them once all have started."""
    threads = offloop.stats()["threads"]
    sleepers = [_testing.sleep(60) for _ in range(threads)]
    async with asyncio.timeout(10):
        while offloop.stats()["running"] < threads:
            await asyncio.sleep(0)
    return sleepers


async def _release(sleepers):
    for s in sleepers:
        s.cancel()
    await asyncio.to_thread(_testing.wait_idle, 10)


async def test_cancelled_queued_job_never_starts(loop):
    sleepers = await _occupy_every_worker()
    started = offloop.stats()["started"]

    task = asyncio.ensure_future(_testing.spin(10_000))
    await asyncio.sleep(0)  # the task submits and awaits its job
    assert offloop.stats()["queued"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert offloop.stats()["queued"] == 0

    await _release(sleepers)
    # Only the sleepers ever started.
    assert offloop.stats()["started"] == started


async def test_cancelling_a_running_sleep_frees_the_worker_promptly(loop):
    threads = offloop.stats()["threads"]
    tasks = [asyncio.ensure_future(_testing.sleep(10)) for _ in range(threads)]
    async with asyncio.timeout(10):
        while offloop.stats()["running"] < threads:
            await asyncio.sleep(0)
    for t in tasks:
        t.cancel()
    async with asyncio.timeout(2):
        for t in tasks:
            with pytest.raises(asyncio.CancelledError):
                await t
        # Every worker is free again: as many new jobs run at once.
        results = await asyncio.gather(
            *(_testing.spin(7) for _ in range(threads)))
    assert results == [_testing.spin_reference(7)] * threads
    assert await asyncio.to_thread(_testing.wait_idle, 2)


async def test_cancel_returns_true_while_pending_and_false_once_done(loop):
    fut = _testing.noop()
    await fut
    assert fut.cancel() is False
    sleepers = await _occupy_every_worker()
    fut = _testing.noop()
    assert fut.cancel("no longer needed") is True
    with pytest.raises(asyncio.CancelledError, match="no longer needed"):
        await fut
    await _release(sleepers)


async def test_a_cancelled_running_job_result_is_discarded(loop):
    fut = _testing.sleep(60)  # still running when the cancel comes
    async with asyncio.timeout(10):
        while offloop.stats()["running"] < 1:
            await asyncio.sleep(0)
    fut.cancel()
    cancelled_before = offloop.stats()["cancelled"]
    await asyncio.to_thread(_testing.wait_idle, 10)
    await asyncio.sleep(0)  # the reader callback runs
    async with asyncio.timeout(10):
        while offloop.stats()["cancelled"] == cancelled_before:
            await asyncio.sleep(0)
    assert fut.cancelled()


async def test_100k_jobs_cancelled_at_random_moments_never_raise(loop):
    rng = random.Random(1234)
    makers = [_testing.noop, lambda: _testing.spin(200),
              lambda: _testing.sleep(0.0001), lambda: _testing.fail("x")]
    total = 0

    async def await_it(fut):
        return await fut

    for _ in range(20):
        batch = [rng.choice(makers)() for _ in range(5000)]
        tasks = [asyncio.ensure_future(await_it(f)) if i % 2 else f
                 for i, f in enumerate(batch)]
        total += len(tasks)
        pending = list(tasks)
        while pending:
            # Cancel some now, let the loop run a little, repeat.
            rng.shuffle(pending)
            cut = len(pending) // 3
            for t in pending[:cut]:
                t.cancel()
            pending = pending[cut + 1:]
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            assert r is None or isinstance(
                r, (int, RuntimeError, asyncio.CancelledError)), repr(r)
        # A task cancelled before it awaited its future, or after the future
        # failed, never looks at it (plain asyncio behaviour, not ours):
        # every future still resolves, and looking at them here keeps
        # asyncio from logging failures nobody retrieved.
        await asyncio.gather(*batch, return_exceptions=True)
    assert total == 100_000
