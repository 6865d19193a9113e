"""Loops come and go (DESIGN invariants 4, 5 and 6)."""

import asyncio
import gc
import os
import threading

import pytest

import offloop
from offloop import _testing

uvloop = pytest.importorskip("uvloop")


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def _os_threads():
    return len(os.listdir("/proc/self/task"))


async def _awaited(make, *args):
    return await make(*args)


def _settle():
    """Let every job end, release closed loops' ports, collect garbage."""
    assert _testing.wait_idle(30)
    gc.collect()
    offloop.stats()  # sweeps ports of closed loops


def test_thousand_loops_in_sequence_leak_no_fd_thread_or_job():
    async def use():
        await asyncio.gather(_testing.noop(), _testing.spin(100))

    def cycle(i):
        factory = uvloop.new_event_loop if i % 2 else asyncio.new_event_loop
        loop = factory()
        loop.run_until_complete(use())
        loop.close()

    for i in range(20):  # warm up: the pool's threads start
        cycle(i)
    _settle()
    fds, threads = _open_fds(), _os_threads()
    for i in range(1000):
        cycle(i)
    _settle()
    assert _open_fds() == fds
    assert _os_threads() == threads
    assert offloop.stats()["loops"] == 0
    assert _testing.live_jobs() == 0


def _close_with_jobs_in_flight(factory, n):
    async def submit():
        return [_testing.spin(200_000) for _ in range(n)]

    loop = factory()
    futures = loop.run_until_complete(submit())
    loop.close()
    return futures


@pytest.mark.parametrize("factory", [asyncio.new_event_loop,
                                     uvloop.new_event_loop],
                         ids=["asyncio", "uvloop"])
def test_loop_closed_with_jobs_in_flight_drops_them_quietly(factory, capfd):
    _settle()
    before = offloop.stats()
    fds = _open_fds()
    futures = _close_with_jobs_in_flight(factory, 1000)
    del futures
    _settle()
    after = offloop.stats()
    ended = {k: after[k] - before[k]
             for k in ("submitted", "completed", "dropped", "cancelled")}
    assert ended["submitted"] == 1000
    assert ended["dropped"] > 0
    assert ended["completed"] + ended["dropped"] + ended["cancelled"] == 1000
    assert _testing.live_jobs() == 0
    assert _open_fds() == fds
    out, err = capfd.readouterr()
    assert out == "" and err == ""


async def test_port_fd_stays_registered_while_the_loop_lives(loop):
    fds = set(os.listdir("/proc/self/fd"))
    await _testing.noop()
    new = set(os.listdir("/proc/self/fd")) - fds
    for _ in range(100):
        await _testing.noop()
    # One port per loop, made on first use, reused after.
    assert set(os.listdir("/proc/self/fd")) - fds == new


def test_port_fd_is_closed_after_its_loop_closes():
    _settle()
    fds = set(os.listdir("/proc/self/fd"))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_awaited(_testing.noop))
    with_loop = set(os.listdir("/proc/self/fd")) - fds
    assert len(with_loop) >= 2  # the loop's own fds, and our eventfd
    loop.close()
    offloop.stats()
    assert set(os.listdir("/proc/self/fd")) - fds == set()


def test_garbage_collected_loop_releases_its_port():
    _settle()
    fds = _open_fds()

    def run_and_forget():
        loop = asyncio.new_event_loop()
        loop.run_until_complete(_awaited(_testing.noop))
        loop.close()

    run_and_forget()
    gc.collect()
    assert offloop.stats()["loops"] == 0
    assert _open_fds() == fds


def test_loops_in_threads_come_and_go():
    errors = []

    def worker(i):
        try:
            for k in range(50):
                factory = (uvloop.new_event_loop if (i + k) % 2
                           else asyncio.new_event_loop)
                loop = factory()
                r = loop.run_until_complete(_awaited(_testing.spin, i + k))
                assert r == _testing.spin_reference(i + k)
                loop.close()
        except BaseException as exc:
            errors.append(exc)

    _settle()
    fds = _open_fds()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    _settle()
    assert _open_fds() == fds


@pytest.mark.parametrize("factory", [asyncio.new_event_loop,
                                     uvloop.new_event_loop],
                         ids=["asyncio", "uvloop"])
def test_every_submit_goes_to_the_loop_running_now(factory):
    """offloop remembers the running loop between submits; a new loop on
    the same thread, while the old ones stay alive, is never mistaken for
    an old one."""
    async def submit():
        fut = _testing.noop()
        assert fut.get_loop() is asyncio.get_running_loop()
        await fut
        return fut.get_loop()

    kept = []  # alive, so a stale memory of any of them would be used
    try:
        for i in range(200):
            loop = factory() if i % 3 else asyncio.new_event_loop()
            kept.append(loop)
            assert loop.run_until_complete(submit()) is loop
            # Back to an older loop that is still open.
            old = kept[i // 2]
            if not old.is_closed():
                assert old.run_until_complete(submit()) is old
            if i % 2:
                loop.close()
    finally:
        for loop in kept:
            loop.close()
    _settle()
