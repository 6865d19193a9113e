"""max_queue: a full queue holds further async jobs back in their loop's
port (they enter the pool as room frees) and blocks blocking callers."""

import asyncio
import threading

import pytest

import offloop
from offloop import _testing


@pytest.fixture
def small_pool():
    offloop.configure(threads=1, max_queue=4)
    yield
    offloop.configure()


async def _occupy_the_worker():
    sleeper = _testing.sleep(60)
    async with asyncio.timeout(10):
        while offloop.stats()["running"] < 1:
            await asyncio.sleep(0)
    return sleeper


async def test_jobs_past_the_bound_wait_then_all_complete(loop, small_pool):
    sleeper = await _occupy_the_worker()
    before = offloop.stats()
    futs = [_testing.spin(i) for i in range(100)]
    s = offloop.stats()
    assert s["queued"] == 4  # the rest wait in the loop's port
    assert s["submitted"] - before["submitted"] == 100
    queued_seen = []
    for f in futs:
        f.add_done_callback(
            lambda _: queued_seen.append(offloop.stats()["queued"]))
    sleeper.cancel()
    async with asyncio.timeout(30):
        results = await asyncio.gather(*futs)
    assert results == [_testing.spin_reference(i) for i in range(100)]
    assert max(queued_seen) <= 4


async def test_held_jobs_keep_their_order(loop, small_pool):
    sleeper = await _occupy_the_worker()
    order = []
    futs = [_testing.noop() for _ in range(50)]
    for i, f in enumerate(futs):
        f.add_done_callback(lambda _, i=i: order.append(i))
    sleeper.cancel()
    async with asyncio.timeout(30):
        await asyncio.gather(*futs)
    await asyncio.sleep(0)
    assert order == list(range(50))


async def test_cancelled_held_jobs_never_start(loop, small_pool):
    sleeper = await _occupy_the_worker()
    started = offloop.stats()["started"]
    futs = [_testing.spin(5) for _ in range(20)]
    for f in futs[10:]:  # held in the port, not yet in the pool
        f.cancel()
    sleeper.cancel()
    async with asyncio.timeout(30):
        results = await asyncio.gather(*futs[:10])
    assert results == [_testing.spin_reference(5)] * 10
    await asyncio.to_thread(_testing.wait_idle, 10)
    # The sleeper and the ten kept jobs started; no cancelled one did.
    assert offloop.stats()["started"] - started == 10


async def test_overload_keeps_the_pool_queue_bounded(loop):
    offloop.configure(threads=2, max_queue=100)
    try:
        # Both workers busy first, so that the overload is certain rather
        # than a race between this loop and the workers.
        sleepers = [_testing.sleep(60) for _ in range(2)]
        async with asyncio.timeout(10):
            while offloop.stats()["running"] < 2:
                await asyncio.sleep(0)
        futs = [_testing.spin(1000) for _ in range(1000)]  # 10x the bound
        assert offloop.stats()["queued"] == 100  # the rest wait in the port
        peak = 0

        def sample(_):
            nonlocal peak
            peak = max(peak, offloop.stats()["queued"])

        for f in futs:
            f.add_done_callback(sample)
        for s in sleepers:
            s.cancel()
        async with asyncio.timeout(60):
            await asyncio.gather(*futs)
        assert peak <= 100
    finally:
        offloop.configure()


def test_blocking_callers_wait_for_room(small_pool):
    results, errors = [], []

    def caller(i):
        try:
            results.append((i, _testing.blocking.spin(i)))
        except BaseException as exc:
            errors.append(exc)

    async def occupy():
        return await _occupy_the_worker()

    loop = asyncio.new_event_loop()
    try:
        sleeper = loop.run_until_complete(occupy())
        threads = [threading.Thread(target=caller, args=(i,))
                   for i in range(8)]
        for t in threads:
            t.start()

        async def until_queue_full():
            async with asyncio.timeout(10):
                while offloop.stats()["queued"] < 4:
                    await asyncio.sleep(0)

        loop.run_until_complete(until_queue_full())
        assert offloop.stats()["queued"] == 4  # never more than the bound
        assert results == []  # every caller is still waiting
        sleeper.cancel()
        for t in threads:
            t.join(30)
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    assert not errors, errors
    assert sorted(results) == [(i, _testing.spin_reference(i))
                               for i in range(8)]


def test_loop_closed_with_held_jobs_drops_them():
    offloop.configure(threads=1, max_queue=2)
    try:
        async def submit():
            sleeper = await _occupy_the_worker()
            futs = [_testing.noop() for _ in range(10)]
            return sleeper, futs

        loop = asyncio.new_event_loop()
        sleeper, futs = loop.run_until_complete(submit())
        before = offloop.stats()
        sleeper.cancel()
        loop.close()
        assert _testing.wait_idle(10)
        after = offloop.stats()
        assert after["dropped"] + after["cancelled"] - before["dropped"] \
            - before["cancelled"] >= 8
        assert _testing.live_jobs() == 0
    finally:
        offloop.configure()
