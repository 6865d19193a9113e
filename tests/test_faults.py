"""Faults: thread creation failing, no free fd for a loop's eventfd, a
buffer mutated while a kernel reads it, and Python callables given to
offloop.run that raise BaseException subclasses.

Scenarios with resource limits run in a fresh interpreter (subprocess),
which must end within its deadline with exit code 0 and an empty stderr.
Interpreter exit under load is test_shutdown.py's.
"""

import asyncio
import sys
import textwrap
import threading

import numpy
import offloop
import pytest

from loop_kinds import LOOPS
from subproc import run_python

HANG_DEADLINE = 60  # seconds before a subprocess is killed as hung

PRELUDE = textwrap.dedent("""
    import errno, os, resource, threading

    def run(coro_fn):
        async def main():
            async with asyncio.timeout(20):
                return await coro_fn()
        loop = new_loop()
        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()
""")


def run_script(body, kind, setup=""):
    """Run PRELUDE + setup + body in a fresh interpreter; return its
    stdout.  Exit code 77 means "cannot test that here": a skip."""
    script = PRELUDE + textwrap.dedent(setup) + textwrap.dedent(body)
    proc = run_python(script, kind, timeout=HANG_DEADLINE)
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr == "", proc.stderr
    return proc.stdout


# ---- thread creation failing ------------------------------------------

# Root ignores RLIMIT_NPROC (the kernel exempts uid 0 whatever its
# capabilities), and this interpreter may live where another uid cannot
# read it (/root/.pyenv).  So the child keeps its effective uid 0, for
# file access, and makes its *real* uid nobody's, which the limit counts,
# after dropping CAP_SYS_ADMIN and CAP_SYS_RESOURCE, which would exempt it.
# Then it probes with a Python thread that the limit holds.
NPROC_SETUP = """
    import ctypes

    NPROC_HARD = resource.getrlimit(resource.RLIMIT_NPROC)[1]

    def limit_threads(extra):
        '''Allow `extra` more threads than this process has now.'''
        resource.setrlimit(resource.RLIMIT_NPROC,
                           (len(os.listdir("/proc/self/task")) + extra,
                            NPROC_HARD))

    def unlimit_threads():
        resource.setrlimit(resource.RLIMIT_NPROC, (NPROC_HARD, NPROC_HARD))

    def become_limitable():
        if os.getuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)

            class Header(ctypes.Structure):
                _fields_ = [("version", ctypes.c_uint32),
                            ("pid", ctypes.c_int)]

            class Data(ctypes.Structure):
                _fields_ = [("effective", ctypes.c_uint32),
                            ("permitted", ctypes.c_uint32),
                            ("inheritable", ctypes.c_uint32)]

            header, data = Header(0x20080522, 0), (Data * 2)()
            if libc.capget(ctypes.byref(header), data) != 0:
                return "capget failed"
            os.setresuid(65534, 0, 0)
            for cap in (21, 24):  # CAP_SYS_ADMIN, CAP_SYS_RESOURCE
                data[cap // 32].effective &= ~(1 << cap % 32)
                data[cap // 32].permitted &= ~(1 << cap % 32)
            if libc.capset(ctypes.byref(header), data) != 0:
                return "capset failed: %s" % os.strerror(ctypes.get_errno())
        limit_threads(0)
        try:
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()
        except RuntimeError:
            return None
        return "RLIMIT_NPROC is not enforced for this process"

    s = offloop.stats()
    assert s["threads_alive"] == 0, s  # the pool has not started
    why = become_limitable()
    if why is not None:
        print("cannot limit thread creation here:", why)
        sys.exit(77)
"""


@pytest.mark.parametrize("kind", LOOPS)
def test_no_thread_can_start_gives_a_clear_error_then_recovers(kind):
    out = run_script("""
        def expect_no_thread(call):
            try:
                call()
            except RuntimeError as exc:
                assert "thread" in str(exc), exc
                return str(exc)
            raise AssertionError("no error though no thread can start")

        async def submit_async():
            return await _testing.spin(10)

        msg = expect_no_thread(lambda: _testing.blocking.spin(10))
        expect_no_thread(lambda: offloop.blocking.run(sum, [1, 2]))
        expect_no_thread(lambda: run(submit_async))
        s = offloop.stats()
        assert s["threads_alive"] == 0, s
        assert s["queued"] == 0 and s["submitted"] == 0, s
        assert _testing.live_jobs() == 0

        # The limit lifted, the next call starts the pool and works.
        unlimit_threads()
        ref = _testing.spin_reference(10)
        assert _testing.blocking.spin(10) == ref
        assert run(submit_async) == ref
        assert offloop.blocking.run(sum, [1, 2]) == 3
        assert offloop.stats()["threads_alive"] == offloop.stats()["threads"]
        print(msg)
    """, kind, setup=NPROC_SETUP)
    assert "thread" in out


@pytest.mark.parametrize("kind", LOOPS)
def test_fewer_threads_than_configured_still_run_every_job(kind):
    out = run_script("""
        limit_threads(1)  # one worker of the default pool, no more
        ns = list(range(0, 3000, 7))

        async def many():
            return await asyncio.gather(*(_testing.spin(n) for n in ns),
                                        offloop.run(sum, [1, 2]))

        got = run(many)
        assert got[:-1] == [_testing.spin_reference(n) for n in ns]
        assert got[-1] == 3
        assert _testing.blocking.noop() is None
        s = offloop.stats()
        assert s["threads_alive"] == 1, s
        assert _testing.wait_idle(10) and _testing.live_jobs() == 0
        unlimit_threads()
        assert _testing.blocking.spin(5) == _testing.spin_reference(5)
        print("ok")
    """, kind, setup=NPROC_SETUP)
    assert out == "ok\n"


# ---- no free fd for the eventfd ---------------------------------------


@pytest.mark.parametrize("kind", LOOPS)
def test_no_free_fd_for_the_eventfd_raises_oserror_then_recovers(kind):
    out = run_script("""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
        ref = _testing.spin_reference(10)

        async def scenario():
            # Filled while the loop runs: the loop itself needs no new fd.
            held = []
            while True:
                try:
                    held.append(os.open(os.devnull, os.O_RDONLY))
                except OSError as exc:
                    assert exc.errno == errno.EMFILE, exc
                    break
            try:
                before = offloop.stats()
                for _ in range(3):  # again and again: the same clear error
                    try:
                        _testing.spin(10)
                    except OSError as exc:
                        assert exc.errno == errno.EMFILE, exc
                    else:
                        raise AssertionError("submit without a free fd")
                after = offloop.stats()
                assert after["submitted"] == before["submitted"], after
                assert after["loops"] == 0, after
                assert _testing.live_jobs() == 0
            finally:
                for fd in held[:8]:
                    os.close(fd)
                del held[:8]
            # fds free again: the port is made on the next submit.
            got = await asyncio.gather(*(_testing.spin(10)
                                         for _ in range(100)))
            assert got == [ref] * 100
            assert await offloop.run(sum, [1, 2]) == 3
            assert offloop.stats()["loops"] == 1
            for fd in held:
                os.close(fd)

        run(scenario)
        assert _testing.wait_idle(10) and _testing.live_jobs() == 0
        print("ok")
    """, kind)
    assert out == "ok\n"


@pytest.mark.parametrize("kind", LOOPS)
def test_a_loop_that_has_its_port_keeps_working_without_free_fds(kind):
    out = run_script("""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))

        async def scenario():
            assert await _testing.noop() is None  # the port exists
            held = []
            while True:
                try:
                    held.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    break
            try:
                got = await asyncio.gather(*(_testing.spin(n)
                                             for n in range(200)))
                assert got == [_testing.spin_reference(n)
                               for n in range(200)]
                assert await offloop.run(sum, [1, 2]) == 3
            finally:
                for fd in held:
                    os.close(fd)

        run(scenario)
        print("ok")
    """, kind)
    assert out == "ok\n"


# ---- a buffer mutated while a kernel reads it -------------------------


async def _until_running(fut):
    """Bounded poll: nothing signals "a worker took the job"."""
    async with asyncio.timeout(10):
        while offloop.stats()["running"] < 1 and not fut.done():
            await asyncio.sleep(0)


async def test_matrix_mutated_while_kernels_read_it_does_not_crash(loop):
    # The result is unspecified (documented); the shape, dtype and the
    # process's survival are not.
    rng = numpy.random.default_rng(7)
    m = rng.standard_normal((100_000, 64)).astype(numpy.float32)
    q = rng.standard_normal((4, 64)).astype(numpy.float32)
    nasty = numpy.array([numpy.nan, numpy.inf, -numpy.inf, 0.0, 1e38,
                         -1e38, 1e-45], numpy.float32)
    calls = [
        (lambda: offloop.top_k(q, m, k=50), "top_k"),
        (lambda: offloop.cosine_similarities(q, m), "cosine_similarities"),
        (lambda: offloop.batch_normalize(m), "batch_normalize"),
        (lambda: offloop.batch_normalize(m, out=m), "batch_normalize_out"),
        (lambda: offloop.cosine_similarity(m[0], m[1]),
         "cosine_similarity"),
    ]
    overlapped = {}
    for make, name in calls:
        overlapped[name] = 0
        for attempt in range(30):  # until writes landed during the job
            if attempt >= 3 and overlapped[name] >= 3:
                break
            fut = make()
            if fut.done():  # a call this small ran inline: nothing to race
                attempt = None
            await _until_running(fut)
            writes = 0
            async with asyncio.timeout(30):
                while not fut.done():
                    rows = rng.integers(0, len(m), 64)
                    m[rows] = rng.choice(nasty, (64, m.shape[1]))
                    q[:] = rng.choice(nasty, q.shape)
                    m[rows] = rng.standard_normal((64, m.shape[1]))
                    writes += 1
                    await asyncio.sleep(0)
                result = await fut
            overlapped[name] += writes
            if name == "top_k":
                scores, idx = result
                assert scores.shape == idx.shape == (4, 50)
                assert ((idx >= 0) & (idx < len(m))).all(), idx
            elif name == "cosine_similarities":
                assert result.shape == (4, len(m))
            elif name.startswith("batch_normalize"):
                assert result.shape == m.shape
                assert result.dtype == numpy.float32
            else:
                assert isinstance(result, float)
            q[:] = rng.standard_normal(q.shape)  # (m's rows end finite)
            if attempt is None:
                break
    print(overlapped)
    # The big calls ran long enough for writes to land while they read.
    assert all(overlapped[name] > 0 for name in
               ("top_k", "cosine_similarities", "batch_normalize")), \
        overlapped


async def test_a_borrowed_buffer_cannot_be_resized_or_freed_under_a_job(
        loop):
    import array
    rows, d = 20_000, 64
    buf = array.array("f", bytes(4 * rows * d))
    data = numpy.frombuffer(buf, numpy.float32).reshape(rows, d)
    data[:] = 1.0
    del data
    q = array.array("f", [1.0] * d)
    mv = memoryview(buf).cast("B").cast("f", (rows, d))
    fut = offloop.cosine_similarities(q, mv)
    del mv
    await _until_running(fut)
    if not fut.done():
        # The job holds the buffer: resizing is refused, not a crash.
        with pytest.raises(BufferError):
            buf.extend([0.0] * 1000)
        with pytest.raises(BufferError):
            q.append(0.0)
    del buf, q  # the job keeps what it borrowed alive
    async with asyncio.timeout(30):
        sims = await fut
    assert sims.shape == (rows,)
    assert numpy.allclose(sims, 1.0)


def test_blocking_twin_reading_a_buffer_another_thread_mutates():
    rng = numpy.random.default_rng(11)
    m = rng.standard_normal((20_000, 128)).astype(numpy.float32)
    q = rng.standard_normal(128).astype(numpy.float32)
    done = threading.Event()
    errors = []

    def mutate():
        try:
            while not done.is_set():
                rows = rng.integers(0, len(m), 64)
                m[rows] = numpy.nan
                m[rows] = 0.5
        except BaseException as exc:  # noqa: BLE001 - to the main thread
            errors.append(exc)

    t = threading.Thread(target=mutate)
    t.start()
    try:
        for _ in range(5):
            scores, idx = offloop.blocking.top_k(q, m, k=10)
            assert scores.shape == idx.shape == (10,)
            assert offloop.blocking.batch_normalize(m).shape == m.shape
    finally:
        done.set()
        t.join(30)
    assert not t.is_alive()
    assert not errors, errors


# ---- offloop.run and BaseException ------------------------------------


class CustomBaseError(BaseException):
    pass


def _raise(exc):
    raise exc


BASE_EXCEPTIONS = [
    pytest.param(lambda: KeyboardInterrupt(), id="KeyboardInterrupt"),
    pytest.param(lambda: SystemExit(3), id="SystemExit"),
    pytest.param(lambda: GeneratorExit(), id="GeneratorExit"),
    pytest.param(lambda: CustomBaseError("x"), id="custom"),
]


def _sys_exit_call():
    sys.exit(5)


@pytest.mark.parametrize("make", BASE_EXCEPTIONS)
async def test_run_of_a_callable_raising_base_exception_resolves_the_future(
        loop, make):
    threads = offloop.stats()["threads"]
    exc = make()
    # More than the pool has workers, so that a worker the exception
    # killed would show: every one of these must resolve.
    futs = [offloop.run(_raise, make()) for _ in range(threads * 4)]
    futs.append(offloop.run(_raise, exc))
    async with asyncio.timeout(20):
        # asyncio.wait, not await: a task awaiting a KeyboardInterrupt or
        # SystemExit re-raises it out of the loop (asyncio's own rule).
        _, pending = await asyncio.wait(futs)
    assert not pending
    for f in futs:
        assert type(f.exception()) is type(exc), f.exception()
    assert futs[-1].exception() is exc
    # The loop and every worker survived.
    async with asyncio.timeout(20):
        got = await asyncio.gather(*(offloop.run(sum, [i, 1])
                                     for i in range(threads * 4)))
    assert got == [i + 1 for i in range(threads * 4)]
    assert offloop.stats()["threads_alive"] == threads


async def test_run_of_sys_exit_does_not_exit_the_worker_or_the_process(
        loop):
    async with asyncio.timeout(20):
        done, _ = await asyncio.wait([offloop.run(_sys_exit_call)])
    (fut,) = done
    assert isinstance(fut.exception(), SystemExit)
    assert fut.exception().code == 5
    assert await offloop.run(sum, [2, 3]) == 5


@pytest.mark.parametrize("make", BASE_EXCEPTIONS)
def test_blocking_run_of_a_callable_raising_base_exception_reraises(make):
    exc = make()
    with pytest.raises(type(exc)) as info:
        offloop.blocking.run(_raise, exc)
    assert info.value is exc
    assert offloop.blocking.run(sum, [1, 2]) == 3


async def test_run_of_cancelled_error_raised_inside_fn_never_hangs(loop):
    # The callable raising CancelledError is not a cancellation of the
    # job: the future gets the exception (or is cancelled); either way it
    # ends, and the loop goes on.
    fut = offloop.run(_raise, asyncio.CancelledError("inside"))
    async with asyncio.timeout(20):
        await asyncio.wait([fut])
    assert fut.done()
    if not fut.cancelled():
        assert isinstance(fut.exception(), asyncio.CancelledError)
    assert await offloop.run(sum, [1]) == 1


@pytest.mark.parametrize("kind", LOOPS)
def test_keyboard_interrupt_in_run_awaited_by_the_main_task(kind):
    # Awaited directly, asyncio re-raises the KeyboardInterrupt out of the
    # loop, as for any coroutine: the program sees it, its loop closes,
    # nothing hangs or prints a second traceback, and offloop goes on.
    out = run_script("""
        def interrupt():
            raise KeyboardInterrupt

        async def main():
            await offloop.run(interrupt)

        try:
            run(main)
        except KeyboardInterrupt:
            print("interrupted")
        assert _testing.wait_idle(10) and _testing.live_jobs() == 0

        async def after():
            return await offloop.run(sum, [1, 2])

        assert run(after) == 3
        print("ok")
    """, kind)
    assert out == "interrupted\nok\n"
