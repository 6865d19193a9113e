"""Blocking twins: usable from any thread, with or without a loop, and the
GIL is released while they wait."""

import asyncio
import os
import signal
import threading
import time

import pytest

import offloop
from offloop import _testing


def test_blocking_twins_return_results_without_a_loop():
    assert _testing.blocking.noop() is None
    assert _testing.blocking.spin(99) == _testing.spin_reference(99)
    assert _testing.blocking.sleep(0.001) is None
    with pytest.raises(RuntimeError, match="^nope$"):
        _testing.blocking.fail("nope")


def test_blocking_twins_from_many_threads():
    results, errors = {}, []

    def worker(i):
        try:
            results[i] = [_testing.blocking.spin(i * 100 + k)
                          for k in range(100)]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for i in range(8):
        assert results[i] == [_testing.spin_reference(i * 100 + k)
                              for k in range(100)]


def test_blocking_wait_releases_the_gil():
    # The job below can only finish if another Python thread runs while
    # this thread waits for it.
    go, done = threading.Event(), threading.Event()

    def other():
        go.wait(10)
        done.set()

    t = threading.Thread(target=other)
    t.start()
    go.set()
    assert offloop.blocking.run(done.wait, 10) is True
    t.join(10)


async def test_blocking_twin_inside_a_running_loop_still_works(loop):
    assert _testing.blocking.spin(3) == _testing.spin_reference(3)


def test_ctrl_c_cancels_a_blocking_call(monkeypatch):
    assert threading.current_thread() is threading.main_thread()

    def interrupt_once_running():
        deadline = time.monotonic() + 10
        while offloop.stats()["running"] < 1:  # bounded poll: no hook
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=interrupt_once_running)
    t.start()
    cancelled = offloop.stats()["cancelled"]
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _testing.blocking.sleep(30)
    assert time.monotonic() - t0 < 10
    t.join(10)
    assert _testing.wait_idle(10)
    assert offloop.stats()["cancelled"] == cancelled + 1


def test_regr_ctrl_c_interrupts_blocking_run_while_the_callable_runs():
    """A Python callable cannot stop at a chunk boundary: Ctrl-C raises at
    once in the caller, the callable runs on to its end on its worker, and
    its result is discarded (counted once as cancelled)."""
    assert threading.current_thread() is threading.main_thread()
    started, release = threading.Event(), threading.Event()
    gave_up = []

    def callable_that_waits():
        started.set()
        release.wait(60)
        return "discarded"

    def interrupt_once_started():
        started.wait(10)
        os.kill(os.getpid(), signal.SIGINT)
        # Without the fix the caller waits for the callable: end it after
        # a while so that the failure is an assertion, not a hang.
        if not interrupted.wait(10):
            gave_up.append(True)
            release.set()

    interrupted = threading.Event()
    before = offloop.stats()
    t = threading.Thread(target=interrupt_once_started)
    t.start()
    with pytest.raises(KeyboardInterrupt):
        offloop.blocking.run(callable_that_waits)
    interrupted.set()
    still_running = not release.is_set()
    release.set()
    t.join(10)
    assert not gave_up and still_running
    assert _testing.wait_idle(10)
    assert offloop.blocking.run(sum, [1, 2]) == 3  # drains the orphan
    after = offloop.stats()
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"] + 1  # the sum only
    assert _testing.live_jobs() == 0


def test_second_ctrl_c_after_an_abandoned_run_leaves_the_pool_usable():
    """Interrupt two callables in a row (both workers end up inside
    abandoned jobs); once they end, the pool serves calls again."""
    release = threading.Event()
    for _ in range(2):
        started = threading.Event()

        def callable_that_waits(started=started):
            started.set()
            release.wait(60)

        def interrupt(started=started):
            started.wait(10)
            os.kill(os.getpid(), signal.SIGINT)

        t = threading.Thread(target=interrupt)
        t.start()
        with pytest.raises(KeyboardInterrupt):
            offloop.blocking.run(callable_that_waits)
        t.join(10)
    release.set()
    assert _testing.wait_idle(10)
    assert offloop.blocking.run(pow, 2, 10) == 1024
    assert _testing.live_jobs() == 0
