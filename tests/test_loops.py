"""Loops come and go (DESIGN invariants 4, 5 and 6)."""

import asyncio
import gc
import os
import sys
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


# ---- loops dropped without close() ------------------------------------
# asyncio closes an unclosed loop in its __del__ and warns (ResourceWarning);
# the warning is the loop's, not offloop's.

def _drop_loops(n, make_jobs):
    """Run a loop that leaves unawaited jobs behind, then drop it."""
    for _ in range(n):
        loop = asyncio.new_event_loop()
        loop.run_until_complete(make_jobs())
        del loop
        gc.collect()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize("job", ["finished", "in_flight"])
def test_regr_dropped_loop_with_unawaited_jobs_is_collected(job):
    """A loop dropped without close() while its jobs wait for it (already
    delivered, or still running when it is dropped) is collected with its
    port, its fd and its jobs; stats() balances."""
    async def leave_jobs():
        if job == "finished":
            _testing.noop()
            _testing.spin(10)
        else:
            _testing.sleep(0.005)

    _settle()
    fds, before = _open_fds(), offloop.stats()
    _drop_loops(50, leave_jobs)
    _settle()
    gc.collect()
    after = offloop.stats()
    assert after["loops"] == before["loops"]
    assert _testing.live_jobs() == 0
    assert _open_fds() == fds
    ended = sum(after[k] - before[k]
                for k in ("completed", "failed", "cancelled", "dropped"))
    assert ended == after["submitted"] - before["submitted"]
    assert after["dropped"] - before["dropped"] == (
        after["submitted"] - before["submitted"])


def _use_and_leave_loops(i, errors, rounds=8):
    """Per thread: asyncio and uvloop loops, some closed with jobs in
    flight, some closed after awaiting, asyncio ones dropped with jobs
    pending (uvloop never frees an unclosed loop: see below)."""
    try:
        for k in range(rounds):
            kind = (i + k) % 4
            factory = (uvloop.new_event_loop if kind == 1
                       else asyncio.new_event_loop)
            loop = factory()
            if kind == 0:  # dropped with jobs pending
                loop.run_until_complete(_pending_jobs())
                del loop
            elif kind == 2:  # closed with jobs in flight
                loop.run_until_complete(_pending_jobs())
                loop.close()
            else:
                loop.run_until_complete(_awaited(_testing.spin, 100))
                loop.close()
    except BaseException as exc:  # brought back to the main thread
        errors.append(exc)


def _in_threads(n, target):
    errors = []
    threads = [threading.Thread(target=target, args=(i, errors))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_regr_many_threads_drop_close_and_abandon_loops(monkeypatch):
    """576 loops in 72 threads; afterwards no fd, port or job remains.

    asyncio's own BaseEventLoop.__del__ can find its self-pipe socket
    already finalized when the garbage collector finalizes the cycle in
    another order (ValueError: Invalid file descriptor: -1, left in its
    close()); pytest's hook would keep that traceback, and with it the
    loop's other socket, open until the test ends.  That error is
    asyncio's: it is dropped here, and any other fails the test."""
    unexpected = []

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, ValueError)
                and "BaseEventLoop.__del__" in repr(unraisable.object)):
            unexpected.append(unraisable.exc_value)

    monkeypatch.setattr(sys, "unraisablehook", hook)
    _in_threads(4, _use_and_leave_loops)  # warm up: the loops' own fds
    _settle()
    gc.collect()
    fds = _open_fds()
    _in_threads(72, _use_and_leave_loops)
    _settle()
    gc.collect()
    assert not unexpected, unexpected
    assert offloop.stats()["loops"] == 0
    assert _testing.live_jobs() == 0
    assert _open_fds() == fds


async def _pending_jobs():
    _testing.noop()
    _testing.sleep(0.002)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_uvloop_dropped_without_close_is_never_collected_even_alone():
    """The bound of the test above: uvloop's own handles keep an unclosed
    uvloop loop alive (with its fds) whether or not offloop was used, so
    there a dropped loop keeps its offloop port and jobs too.  If uvloop
    starts collecting such loops, this fails: then extend the test above
    to dropped uvloop loops."""
    import weakref

    async def plain():
        await asyncio.sleep(0)

    loop = uvloop.new_event_loop()
    loop.run_until_complete(plain())
    alive = weakref.ref(loop)
    del loop
    gc.collect()
    leaked = alive()
    assert leaked is not None
    leaked.close()  # release what uvloop kept
