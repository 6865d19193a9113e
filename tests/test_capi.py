"""The public C API (include/offloop.h), through a test extension.

tests/capi_testext.c is compiled here with the compiler Python was built
with, against ``offloop.get_include()``, and imported from a temporary
folder.  It submits jobs that behave and jobs that misbehave; the tests
check results, errors, cancellation, and that ``release(ctx)`` runs exactly
once on every path: completed, failed, cancelled, refused at submit, loop
closed, interpreter exiting.  Every wait has a deadline; jobs that wait on
the extension's gate are let go by the test or by a cancel.
"""

import asyncio
import ctypes
import importlib.machinery
import importlib.util
import json
import os
import re
import pathlib
import shlex
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time

import pytest

import offloop
from offloop import _testing

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None

HERE = pathlib.Path(__file__).resolve().parent
DEADLINE = 30  # seconds, for every wait below

LOOP_FACTORIES = [pytest.param(asyncio.new_event_loop, id="asyncio")]
if uvloop is not None:
    LOOP_FACTORIES.append(pytest.param(uvloop.new_event_loop, id="uvloop"))


# ---- building the test extension ------------------------------------


def _compile(src, out_dir, name, extra=()):
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    if shutil.which(cc[0]) is None:
        pytest.skip(f"no C compiler ({cc[0]}) to build the C API test "
                    "extension")
    out = out_dir / (name + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = [*cc, "-shared", "-fPIC", "-O1", "-Wall", "-Wextra",
           "-Wno-unused-parameter", "-Werror", *extra,
           "-I", offloop.get_include(),
           "-I", sysconfig.get_paths()["include"],
           str(src), "-o", str(out)]
    # Under the sanitizer CI stage, keep libasan out of the compiler.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def ext_dir(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("capi")
    _compile(HERE / "capi_testext.c", out_dir, "capi_testext")
    return out_dir


@pytest.fixture(scope="module")
def ext(ext_dir):
    path = next(ext_dir.glob("capi_testext*"))
    loader = importlib.machinery.ExtensionFileLoader("capi_testext",
                                                     str(path))
    spec = importlib.util.spec_from_loader("capi_testext", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture
def t(ext):
    """The extension, gate closed; checks that every ctx was released
    exactly once by the end of the test."""
    ext.set_gate(False)
    before = ext.counters()
    yield ext
    ext.set_gate(True)  # let any gated job go before the leak check
    assert _testing.wait_idle(DEADLINE)
    _testing.live_jobs()  # drains orphans and closed loops' jobs
    after = ext.counters()
    assert after["live"] == before["live"], "a ctx was never released"
    assert after["double_releases"] == before["double_releases"]


def _delta(ext, before, key):
    return ext.counters()[key] - before[key]


async def _until(predicate):
    async with asyncio.timeout(DEADLINE):
        while not predicate():
            await asyncio.sleep(0)


# ---- the capsule and the build helpers --------------------------------


def test_capsule_carries_the_abi_version():
    capsule = offloop._core._C_API
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    ptr = get(capsule, b"offloop._core._C_API")
    assert ctypes.c_uint.from_address(ptr).value == 1


def test_get_include_holds_the_header():
    header = pathlib.Path(offloop.get_include()) / "offloop.h"
    assert header.is_file()
    assert "OFFLOOP_ABI_VERSION 1" in header.read_text()


def test_get_cmake_dir_holds_the_package_config():
    folder = pathlib.Path(offloop.get_cmake_dir())
    assert (folder / "offloopConfig.cmake").is_file()
    assert (folder / "offloopConfigVersion.cmake").is_file()


@pytest.mark.parametrize("flag, expected", [
    ("--include", offloop.get_include),
    ("--cmake-dir", offloop.get_cmake_dir),
])
def test_python_m_offloop_prints_the_paths(flag, expected):
    out = subprocess.run([sys.executable, "-m", "offloop", flag],
                         capture_output=True, text=True, check=True,
                         timeout=DEADLINE).stdout
    assert out.strip() == expected()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="no cmake")
@pytest.mark.parametrize("version, found", [("0.1", True), ("99", False)])
def test_cmake_find_package_gives_the_header_target(tmp_path, version,
                                                    found):
    (tmp_path / "CMakeLists.txt").write_text(textwrap.dedent(f"""\
        cmake_minimum_required(VERSION 3.18)
        project(probe LANGUAGES NONE)
        find_package(offloop {version} CONFIG)
        if(offloop_FOUND)
          get_target_property(dirs offloop::headers
                              INTERFACE_INCLUDE_DIRECTORIES)
          message(STATUS "OFFLOOP_INCLUDE=${{dirs}}")
        else()
          message(STATUS "OFFLOOP_NOT_FOUND")
        endif()
        """))
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run(
        ["cmake", "-S", str(tmp_path), "-B", str(tmp_path / "b"),
         f"-Doffloop_DIR={offloop.get_cmake_dir()}"],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    if found:
        assert f"OFFLOOP_INCLUDE={offloop.get_include()}" in proc.stdout
    else:
        assert "OFFLOOP_NOT_FOUND" in proc.stdout


# ---- results and errors -------------------------------------------------


async def test_submit_resolves_with_complete_result_and_releases(loop, t):
    before = t.counters()
    fut = t.submit("ok")
    assert isinstance(fut, asyncio.Future) and fut.get_loop() is loop
    assert await fut == 42
    assert _delta(t, before, "releases") == 1


def test_submit_blocking_returns_complete_result(t):
    before = t.counters()
    assert t.submit("ok", blocking=True) == 42
    assert _delta(t, before, "releases") == 1


@pytest.mark.parametrize("blocking", [False, True])
async def test_complete_null_without_exception_is_system_error(loop, t,
                                                               blocking):
    with pytest.raises(SystemError,
                       match=r"complete callback .* in .*capi_testext"
                             r".*returned NULL without setting an exception"):
        res = t.submit("null_noexc", blocking=blocking)
        if not blocking:
            await res


async def test_complete_result_with_exception_set_is_system_error(loop, t):
    with pytest.raises(SystemError, match="returned a result with an "
                                          "exception set") as info:
        await t.submit("result_with_exc")
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.__cause__) == "left set"


@pytest.mark.parametrize("blocking", [False, True])
async def test_complete_exception_reaches_the_caller(loop, t, blocking):
    with pytest.raises(ValueError, match="^from complete$"):
        res = t.submit("complete_raises", blocking=blocking)
        if not blocking:
            await res


@pytest.mark.parametrize("blocking", [False, True])
async def test_release_exception_is_system_error_through_the_future(
        loop, t, blocking):
    before = t.counters()
    with pytest.raises(SystemError, match=r"release callback .* in "
                                          r".*capi_testext.*raised an exception") as info:
        res = t.submit("release_raises", blocking=blocking)
        if not blocking:
            await res
    assert isinstance(info.value.__cause__, KeyError)
    assert _delta(t, before, "releases") == 1


async def test_execute_failure_without_complete_is_runtime_error(loop, t):
    with pytest.raises(RuntimeError, match=r"execute callback .* in "
                                           r".*capi_testext.*failed with code 7"):
        await t.submit("execute_fails")


async def test_no_complete_callback_gives_none(loop, t):
    assert await t.submit("no_complete") is None


def test_null_execute_raises_at_the_call_and_releases(t):
    before = t.counters()
    with pytest.raises(SystemError, match="execute callback is NULL"):
        t.submit("null_execute")
    assert _delta(t, before, "releases") == 1


def test_submit_without_running_loop_raises_and_releases(t):
    before = t.counters()
    with pytest.raises(RuntimeError, match="no running event loop"):
        t.submit("ok")
    assert _delta(t, before, "releases") == 1


def test_call_before_offloop_import_raises_and_releases(t):
    before = t.counters()
    with pytest.raises(RuntimeError, match=r"before offloop_import\(\)"):
        t.submit_unimported()
    assert _delta(t, before, "releases") == 1


# ---- chunks ---------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 1000])
async def test_every_chunk_runs_exactly_once(loop, t, n):
    assert await t.chunks(n) == [1] * n
    assert t.chunks(n, True) == [1] * n


async def test_many_jobs_in_flight_each_release_once(loop, t):
    before = t.counters()
    results = await asyncio.gather(*(t.submit("ok") for _ in range(2000)),
                                   *(t.chunks(5) for _ in range(200)))
    assert results[:2000] == [42] * 2000
    assert results[2000:] == [[1] * 5] * 200
    assert _delta(t, before, "releases") == 2200


# ---- cancellation ---------------------------------------------------------


async def test_cancel_queued_job_never_starts_and_releases(loop, t):
    threads = offloop.stats()["threads"]
    before = t.counters()
    blockers = [t.submit("gated") for _ in range(threads)]
    await _until(lambda: _delta(t, before, "started") == threads)
    queued = t.submit("gated")
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert _delta(t, before, "releases") == 1  # at once, on this thread
    t.set_gate(True)
    assert await asyncio.gather(*blockers) == [42] * threads
    assert _delta(t, before, "started") == threads


async def test_release_raising_after_cancel_reaches_the_exception_handler(t):
    loop = asyncio.get_running_loop()
    reported = []
    loop.set_exception_handler(lambda _, ctx: reported.append(ctx))
    threads = offloop.stats()["threads"]
    before = t.counters()
    blockers = [t.submit("gated") for _ in range(threads)]
    await _until(lambda: _delta(t, before, "started") == threads)
    queued = t.submit("release_raises")
    queued.cancel()  # never starts; its release runs now, and raises
    assert _delta(t, before, "releases") == 1
    assert len(reported) == 1
    assert isinstance(reported[0]["exception"], SystemError)
    assert "release callback" in str(reported[0]["exception"])
    assert reported[0]["future"] is queued
    t.set_gate(True)
    assert await asyncio.gather(*blockers) == [42] * threads


async def test_cancel_running_job_reaches_execute(loop, t):
    before = t.counters()
    task = asyncio.ensure_future(t.submit("gated"))
    await _until(lambda: _delta(t, before, "started") == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The worker sees the cancel, and the job comes back to this loop,
    # which releases it.
    await _until(lambda: _delta(t, before, "releases") == 1)
    assert _delta(t, before, "cancels_seen") == 1


@pytest.mark.parametrize("factory", LOOP_FACTORIES)
def test_loop_closed_with_jobs_in_flight_releases_each(t, factory):
    before = t.counters()
    dropped = offloop.stats()["dropped"]

    async def submit():
        return [t.submit("gated") for _ in range(6)]

    loop = factory()
    futs = loop.run_until_complete(submit())
    loop.close()
    t.set_gate(True)
    assert _testing.wait_idle(DEADLINE)
    assert _testing.live_jobs() == 0
    assert _delta(t, before, "releases") == 6
    assert offloop.stats()["dropped"] - dropped == 6
    del futs


# ---- interpreter exit, fork, ABI -----------------------------------------


def _run_script(ext_dir, body, timeout=DEADLINE):
    """Run ``body`` in a fresh interpreter that can import the extension;
    its atexit hook, registered before offloop is imported and so run
    after offloop's own, prints the counters as JSON."""
    script = textwrap.dedent("""\
        import atexit, json, sys
        sys.path.insert(0, {ext_dir!r})

        def _report():
            print("COUNTERS " + json.dumps(capi_testext.counters()),
                  flush=True)

        atexit.register(_report)
        import capi_testext
        import asyncio, offloop
        """).format(ext_dir=str(ext_dir)) + textwrap.dedent(body)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}
    proc = subprocess.run([sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=timeout,
                          env=env)
    lines = [ln for ln in proc.stdout.splitlines()
             if ln.startswith("COUNTERS ")]
    counters = [json.loads(ln.split(" ", 1)[1]) for ln in lines]
    return proc, counters


def test_interpreter_exit_releases_queued_and_stopped_jobs(ext_dir):
    proc, counters = _run_script(ext_dir, """\
        async def main():
            futs = [capi_testext.submit("gated") for _ in range(8)]
            threads = offloop.stats()["threads"]
            async with asyncio.timeout(30):
                while capi_testext.counters()["started"] < threads:
                    await asyncio.sleep(0)
            return futs

        loop = asyncio.new_event_loop()
        futs = loop.run_until_complete(main())
        # Exit with the loop open: jobs running and queued.
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert counters[-1]["live"] == 0
    assert counters[-1]["releases"] == 8
    assert counters[-1]["double_releases"] == 0


def test_interpreter_exit_leaves_a_job_still_running_alone(ext_dir):
    # A job that ignores cancellation past offloop.SHUTDOWN_TIMEOUT keeps
    # its ctx (a worker still uses it): no release, no crash, no hang.
    proc, counters = _run_script(ext_dir, """\
        offloop.SHUTDOWN_TIMEOUT = 0.2

        async def main():
            fut = capi_testext.submit("stubborn", seconds=5)
            async with asyncio.timeout(30):
                while capi_testext.counters()["started"] < 1:
                    await asyncio.sleep(0)
            return fut

        loop = asyncio.new_event_loop()
        fut = loop.run_until_complete(main())
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert counters[-1]["live"] == 1
    assert counters[-1]["releases"] == 0


def test_fork_child_never_releases_the_parents_jobs(ext_dir):
    proc, counters = _run_script(ext_dir, """\
        import os

        async def main():
            fut = capi_testext.submit("gated")
            async with asyncio.timeout(30):
                while capi_testext.counters()["started"] < 1:
                    await asyncio.sleep(0)
            return fut

        loop = asyncio.new_event_loop()
        fut = loop.run_until_complete(main())
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # runs atexit: the parent's job is not ours
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        capi_testext.set_gate(True)
        print("RESULT", loop.run_until_complete(fut), flush=True)
        loop.close()
        """)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT 42" in proc.stdout
    child, parent = counters
    assert child["releases"] == 0
    assert parent["releases"] == 1 and parent["live"] == 0


def test_abi_version_mismatch_is_a_clear_import_error(ext_dir):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""\
        import ctypes, sys
        import offloop._core
        sys.path.insert(0, {ext_dir!r})

        class Table(ctypes.Structure):
            _fields_ = [("abi_version", ctypes.c_uint),
                        ("flags", ctypes.c_uint),
                        ("size", ctypes.c_size_t)]

        table = Table(999, 0, 1 << 20)
        name = ctypes.create_string_buffer(b"offloop._core._C_API")
        new = ctypes.pythonapi.PyCapsule_New
        new.restype = ctypes.py_object
        new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        offloop._core._C_API = new(ctypes.addressof(table), name, None)
        try:
            import capi_testext
        except ImportError as exc:
            print("IMPORTERROR", exc)
        """).format(ext_dir=str(ext_dir))],
        capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTERROR offloop C API version mismatch" in proc.stdout
    assert "ABI version 1" in proc.stdout
    assert "provides version 999" in proc.stdout


# ---- batchable jobs (offloop_submit_batch) --------------------------------


async def _hold_workers_with_gated_jobs(t):
    threads = offloop.stats()["threads"]
    before = t.counters()
    blockers = [t.submit("gated") for _ in range(threads)]
    await _until(lambda: _delta(t, before, "started") == threads)
    return blockers


async def test_batch_jobs_with_one_key_share_one_execute(loop, t):
    before, stats = t.counters(), offloop.stats()
    blockers = await _hold_workers_with_gated_jobs(t)
    same = [t.batch(v, 1) for v in range(5)]
    other = [t.batch(v, 2) for v in range(3)]
    blocking = []
    thread = threading.Thread(
        target=lambda: blocking.append(t.batch(7, 2, True)))
    thread.start()
    await asyncio.to_thread(_wait_queued, 9)
    t.set_gate(True)
    await asyncio.gather(*blockers)
    # result = value * 10 + the size of the batch it ran in
    assert await asyncio.gather(*same) == [v * 10 + 5 for v in range(5)]
    assert await asyncio.gather(*other) == [v * 10 + 4 for v in range(3)]
    thread.join(DEADLINE)
    assert blocking == [74]
    assert _delta(t, before, "batch_runs") == 2
    after = offloop.stats()
    assert after["batches"] - stats["batches"] == 2
    assert after["batched"] - stats["batched"] == 9


async def test_batch_job_alone_runs_at_once(loop, t):
    before = t.counters()
    assert await t.batch(3, 99) == 31
    assert t.batch(4, 99, True) == 41
    assert _delta(t, before, "batch_runs") == 2


async def test_batch_failure_fails_every_member_and_releases_each(loop, t):
    before = t.counters()
    blockers = await _hold_workers_with_gated_jobs(t)
    futs = [t.batch(v, 5, False, v == 2) for v in range(4)]
    t.set_gate(True)
    await asyncio.gather(*blockers)
    outcomes = await asyncio.gather(*futs, return_exceptions=True)
    for v, o in enumerate(outcomes):
        assert isinstance(o, RuntimeError)
        if v == 2:  # no complete callback: offloop names the code
            assert re.search(r"execute callback .*capi_testext.*failed "
                             r"with code 9", str(o))
        else:  # complete ran and raised from what execute_batch left
            assert str(o) == "batch failed (-9)"

    assert _delta(t, before, "batch_runs") == 1
    # The next batch runs normally.
    assert await t.batch(1, 5) == 11


async def test_batch_member_cancelled_while_queued_is_released_once(loop, t):
    before = t.counters()
    blockers = await _hold_workers_with_gated_jobs(t)
    futs = [t.batch(v, 6) for v in range(4)]
    futs[1].cancel()
    t.set_gate(True)
    await asyncio.gather(*blockers)
    outcomes = await asyncio.gather(*futs, return_exceptions=True)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert [outcomes[i] for i in (0, 2, 3)] == [3, 23, 33]
    assert _delta(t, before, "batch_runs") == 1


def _wait_queued(n):
    deadline = time.monotonic() + DEADLINE
    while offloop.stats()["queued"] < n:
        assert time.monotonic() < deadline
        time.sleep(0.001)
