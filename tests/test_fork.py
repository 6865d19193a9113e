"""Fork (DESIGN invariant 7): after fork() the child gets a fresh pool and
fresh ports on first use; nothing of the parent's runs twice; the parent is
unaffected.

The parent forks while its loop is not running (between run_until_complete
calls), with jobs queued and running.  Everything a child does is wrapped so
that it always ends in os._exit(): a failing child reports its traceback
through a pipe and never runs the rest of pytest.  Every wait has a
deadline; a child that outlives its deadline is killed.
"""

import asyncio
import functools
import os
import subprocess
import sys
import textwrap
import time

import pytest

import offloop
from offloop import _testing

from forking import CHILD_DEADLINE, fork
from loop_kinds import LOOPS, uvloop
from subproc import run_python

pytestmark = [
    # Python 3.12+ warns about fork() in a process with threads; forking a
    # process whose pool is running is exactly what is tested here.
    pytest.mark.filterwarnings(
        "ignore:.*fork.*:DeprecationWarning"),
]


SPIN_NS = [200_000 + k for k in range(4)]  # ~0.2 ms of work each
CHILD_NS = list(range(0, 3000, 7))


@functools.lru_cache(maxsize=None)
def _ref(n):
    return _testing.spin_reference(n)


def _new_loop(kind):
    return uvloop.new_event_loop() if kind == "uvloop" else \
        asyncio.new_event_loop()


def _run_on_new_loop(kind, coro_fn, timeout=CHILD_DEADLINE / 2):
    """Run coro_fn() on a brand-new loop of this kind; fail on loop errors."""
    errors = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(
            lambda _, ctx: errors.append(repr(ctx)))
        async with asyncio.timeout(timeout):
            return await coro_fn()

    loop = _new_loop(kind)
    try:
        result = loop.run_until_complete(main())
    finally:
        loop.close()
    assert not errors, errors
    return result


# ---- children ----------------------------------------------------------


def _expect_child_ok(child):
    code, report = child.wait()
    assert code == 0, f"child failed (exit {code}):\n{report}"
    assert isinstance(report, dict), report
    return report


def child_work(kind):
    """What every child does: checks that it starts with an empty pool,
    then uses the pool through a new loop and through blocking twins.
    Returns a report of the child's counters."""
    at_fork = offloop.stats()
    assert at_fork["queued"] == 0, at_fork
    assert at_fork["running"] == 0, at_fork
    assert at_fork["threads_alive"] == 0, at_fork

    async def main():
        spins = asyncio.gather(*(_testing.spin(n) for n in CHILD_NS))
        loops = offloop.stats()["loops"]  # the new loop's port, only
        assert await spins == [_ref(n) for n in CHILD_NS]
        assert await _testing.noop() is None
        with pytest.raises(RuntimeError, match="^child$"):
            await _testing.fail("child")
        assert await offloop.run(sum, [1, 2]) == 3
        return loops

    loops = _run_on_new_loop(kind, main)
    assert loops == 1, loops
    assert _testing.blocking.spin(12345) == _ref(12345)
    assert _testing.blocking.noop() is None
    assert offloop.blocking.run(sum, [1, 2]) == 3
    assert _testing.wait_idle(10)
    after = offloop.stats()
    mine = len(CHILD_NS) + 3 + 3  # async jobs + blocking jobs
    delta = {k: after[k] - at_fork[k]
             for k in ("submitted", "started", "completed", "failed",
                       "cancelled", "dropped", "resolved")}
    # Only the child's own jobs ran here: the parent's queue was not
    # inherited.  The parent's jobs delivered to its (now stale) port are
    # never resolved in the child.
    assert delta == {"submitted": mine, "started": mine,
                     "completed": mine - 1, "failed": 1, "cancelled": 0,
                     "dropped": 0, "resolved": len(CHILD_NS) + 3}, delta
    return {"pid": os.getpid(), "at_fork": at_fork, "delta": delta}


# ---- parent's side -----------------------------------------------------


def _submit_busy(loop, n_spin=300, n_sleep=200, record=None):
    """On loop (not running at return), submit hundreds of jobs and return
    (futures, expected results) once some of them are running."""
    async def submit():
        futs, expected = [], []
        for i in range(max(n_spin, n_sleep)):
            if i < n_sleep:
                futs.append(_testing.sleep(0.004))
                expected.append(None)
            if i < n_spin:
                n = SPIN_NS[i % len(SPIN_NS)]
                futs.append(_testing.spin(n))
                expected.append(_ref(n))
        if record is not None:
            path, count = record
            for i in range(count):
                futs.append(offloop.run(_record, path, i))
                expected.append(i)
        # Bounded poll: the workers get the jobs on the next loop tick.
        async with asyncio.timeout(10):
            while offloop.stats()["running"] < 1:
                await asyncio.sleep(0)
        return futs, expected

    return loop.run_until_complete(submit())


def _record(path, i):
    """A Python job: appends "<pid> <i>" to path (then sleeps a little,
    releasing the GIL, so that the queue drains slowly)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()} {i}\n".encode())
    finally:
        os.close(fd)
    time.sleep(0.002)
    return i


def _collect(loop, futs, timeout=20):
    async def gather():
        async with asyncio.timeout(timeout):
            return await asyncio.gather(*futs)

    return loop.run_until_complete(gather())


class ParentLoop:
    """The parent's loop L, failing the test on any unhandled loop error."""

    def __init__(self, kind):
        self.loop = _new_loop(kind)
        self.errors = []
        self.loop.set_exception_handler(
            lambda _, ctx: self.errors.append(ctx))

    def __enter__(self):
        return self.loop

    def __exit__(self, *exc):
        self.loop.close()
        if exc[0] is None:
            assert not self.errors, self.errors


@pytest.mark.parametrize("kind", LOOPS)
def test_fork_while_jobs_run_gives_the_child_a_fresh_working_pool(kind):
    for n in SPIN_NS + CHILD_NS + [12345]:
        _ref(n)  # computed before fork, inherited by the child
    with ParentLoop(kind) as loop:
        futs, expected = _submit_busy(loop)
        before = offloop.stats()
        assert before["queued"] >= 100, before  # hundreds still queued
        assert before["running"] >= 1, before
        with fork(lambda: child_work(kind)) as child:
            results = _collect(loop, futs)
            assert results == expected
            report = _expect_child_ok(child)
    assert report["pid"] != os.getpid()
    assert report["at_fork"]["queued"] == 0


@pytest.mark.parametrize("kind", LOOPS)
def test_jobs_queued_before_fork_run_exactly_once_in_the_parent(
        kind, tmp_path):
    path = str(tmp_path / "record")
    for n in SPIN_NS + CHILD_NS + [12345]:
        _ref(n)
    start = offloop.stats()
    with ParentLoop(kind) as loop:
        futs, expected = _submit_busy(loop, n_spin=200, n_sleep=100,
                                      record=(path, 200))
        before = offloop.stats()
        assert before["queued"] >= 100, before
        with fork(lambda: child_work(kind)) as child:
            report = _expect_child_ok(child)
            # The child is gone: whatever of ours ran, ran here.
            results = _collect(loop, futs)
        assert results == expected
    assert _testing.wait_idle(10)
    end = offloop.stats()
    n = len(futs)
    delta = {k: end[k] - start[k]
             for k in ("submitted", "started", "completed", "failed",
                       "cancelled", "dropped", "resolved")}
    assert delta == {"submitted": n, "started": n, "completed": n,
                     "failed": 0, "cancelled": 0, "dropped": 0,
                     "resolved": n}, delta
    # Each Python job ran once, in the parent, never in the child.
    with open(path) as f:
        lines = [line.split() for line in f.read().splitlines()]
    assert sorted(int(i) for _, i in lines) == list(range(200))
    assert {int(pid) for pid, _ in lines} == {os.getpid()}
    # And the child saw an empty queue though ours was full.
    assert report["at_fork"]["queued"] == 0
    assert before["queued"] >= 100


@pytest.mark.parametrize("kind", LOOPS)
def test_fork_twice_gives_the_grandchild_a_fresh_working_pool(kind):
    for n in SPIN_NS + CHILD_NS + [12345]:
        _ref(n)

    def child():
        # A busy child that forks again, its own loop not running.
        mine = child_work(kind)
        with ParentLoop(kind) as loop:
            futs, expected = _submit_busy(loop, n_spin=100, n_sleep=100)
            assert offloop.stats()["queued"] >= 50
            with fork(lambda: child_work(kind)) as grandchild:
                assert _collect(loop, futs) == expected
                grand = _expect_child_ok(grandchild)
        assert grand["pid"] not in (mine["pid"], os.getppid())
        return {"child": mine, "grandchild": grand}

    with ParentLoop(kind) as loop:
        futs, expected = _submit_busy(loop, n_spin=100, n_sleep=100)
        with fork(child) as c:
            assert _collect(loop, futs) == expected
            report = _expect_child_ok(c)
    assert report["grandchild"]["at_fork"]["queued"] == 0


@pytest.mark.parametrize("kind", LOOPS)
def test_fork_of_an_idle_parent_after_its_last_job_works(kind):
    """The pool is started but idle at fork; both sides keep working."""
    for n in CHILD_NS + [12345]:
        _ref(n)
    with ParentLoop(kind) as loop:
        futs, expected = _submit_busy(loop, n_spin=10, n_sleep=2)
        assert _collect(loop, futs) == expected
        assert _testing.wait_idle(10)
        with fork(lambda: child_work(kind)) as child:
            report = _expect_child_ok(child)
        futs, expected = _submit_busy(loop, n_spin=10, n_sleep=2)
        assert _collect(loop, futs) == expected
    assert report["delta"]["started"] > 0


CHILD_EXITS = textwrap.dedent("""
    import asyncio, os, select, signal, sys, time
    import offloop

    def naps():
        for _ in range(400):  # 20 s of GIL-free sleeps
            time.sleep(0.05)

    async def main():
        futs = [offloop.run(naps) for _ in range(4)]
        async with asyncio.timeout(10):
            while offloop.stats()["running"] < offloop.stats()["threads"]:
                await asyncio.sleep(0)
        return futs

    loop = asyncio.new_event_loop()
    keep = loop.run_until_complete(main())
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        # A child that uses the pool and then exits normally (atexit runs).
        os.close(r)
        signal.alarm(15)
        assert offloop.blocking.run(sum, [1, 2]) == 3
        os.write(w, str(time.monotonic()).encode())
        sys.exit(0)
    os.close(w)
    pidfd = os.pidfd_open(pid)
    if not select.select([pidfd], [], [], 15)[0]:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        sys.exit("child hung")
    _, status = os.waitpid(pid, 0)
    exited = time.monotonic()
    assert os.waitstatus_to_exitcode(status) == 0, status
    print("%.3f" % (exited - float(os.read(r, 100))))
    os._exit(0)  # the parent's own exit is test_shutdown's business
""")


def test_child_exit_is_not_delayed_by_python_jobs_the_parent_was_running():
    """The child has no worker inside a Python callable: its interpreter
    exit must not wait for the parent's (offloop.SHUTDOWN_TIMEOUT)."""
    # 3.12+ warns that forking a threaded process may deadlock: offloop's
    # fork handling is what is under test, and stderr must hold nothing
    # else.
    proc = subprocess.run([sys.executable, "-W",
                           "ignore:This process:DeprecationWarning", "-c",
                           CHILD_EXITS],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    exit_seconds = float(proc.stdout)
    assert exit_seconds < 1.0, f"the child took {exit_seconds} s to exit"


# ---- a parent whose pool never started ---------------------------------

NEVER_STARTED = textwrap.dedent("""
    import os, select, signal

    def use_pool(tag):
        async def main():
            async with asyncio.timeout(10):
                spins = await asyncio.gather(
                    *(_testing.spin(n) for n in range(100)))
                assert spins == [_testing.spin_reference(n)
                                 for n in range(100)], tag
                assert await _testing.noop() is None
                assert await offloop.run(sum, [1, 2]) == 3
        loop = new_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
        assert _testing.blocking.spin(99) == _testing.spin_reference(99)
        assert offloop.blocking.run(sum, [3, 4]) == 7

    s = offloop.stats()
    assert s["submitted"] == 0 and s["threads_alive"] == 0, s
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(15)
            use_pool("child")
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    use_pool("parent")
    pidfd = os.pidfd_open(pid)
    if not select.select([pidfd], [], [], 15)[0]:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        sys.exit("child hung")
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
""")


@pytest.mark.parametrize("kind", LOOPS)
def test_fork_before_any_job_gives_both_sides_a_working_pool(kind):
    # The pool must never have started: a fresh interpreter.
    proc = run_python(NEVER_STARTED, kind, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


@pytest.mark.parametrize("kind", LOOPS)
def test_a_child_forked_inside_a_running_loop_has_no_running_loop(kind):
    """As for asyncio, the parent's running loop is not the child's.

    offloop remembers the running loop between submits; a fork must make
    it forget, or the child would queue jobs on the parent's loop."""
    def in_child():
        try:
            _testing.noop()
        except RuntimeError as exc:
            return str(exc)
        return "submitted to the parent's loop"

    async def fork_inside():
        for _ in range(2):  # the first makes the port, which forgets
            await _testing.noop()
        # The running loop is remembered now.
        with fork(in_child) as child:
            return child.wait()

    with ParentLoop(kind) as loop:
        code, report = loop.run_until_complete(fork_inside())
    assert code == 0, report
    assert "no running event loop" in report
