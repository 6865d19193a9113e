"""The workers' scheduling priority, read back from the kernel.

By default a worker runs under the normal policy at the nice of the
thread that started it, with the longest time slice the kernel grants
(EEVDF custom slices, Linux 6.12+), so that it gets a normal thread's
share beside busy processes and a waking loop thread still preempts it
(src/core/priority.c has the measured reasons).  OFFLOOP_WORKER_PRIORITY
is "idle" (SCHED_IDLE) or a nice increment from 0 to 19; anything else
warns at import and keeps the default.  The environment is read when the
pool starts, so every setting runs in a fresh interpreter.
"""

import ctypes
import inspect
import json
import os
import platform
import subprocess
import struct
import sys
import threading

import pytest

import offloop
import offloop._core

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or offloop._core._portable,
    reason="per-thread scheduling is Linux's (the OL_PORTABLE build stands "
           "for macOS and the BSDs: workers keep the starting priority)")

SLICE_NS = 100_000_000  # the longest custom slice Linux grants
SCHED_GETATTR = {"x86_64": 315, "aarch64": 275}.get(platform.machine())


def slice_of(tid, nr=SCHED_GETATTR):
    """A thread's time slice: sched_getattr(2)'s sched_runtime, which
    Linux 6.12+ reports for the normal policy (0 before: no custom
    slices); None where the call is unknown or fails."""
    if nr is None:
        return None
    buf = ctypes.create_string_buffer(56)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(nr, tid, buf, 48, 0) != 0:
        return None
    return struct.unpack_from("IIQiIQ", buf.raw)[5]


SLICE_OF = (f"import ctypes, struct\nSCHED_GETATTR = {SCHED_GETATTR!r}\n"
            + inspect.getsource(slice_of))


# Every worker reports its thread id: a barrier in the job keeps one
# worker from taking both.  The child prints, for each worker, its policy,
# nice and slice, then the starting thread's nice and slice.
REPORT_WORKERS = SLICE_OF + """
import json, os, sys, threading
if int(sys.argv[1]):  # start from a niced thread: workers inherit it
    os.setpriority(os.PRIO_PROCESS, 0, int(sys.argv[1]))
import offloop
unprivileged = None
if len(sys.argv) > 2:  # drop root before the pool starts
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -1)  # from nice 0
        unprivileged = False
    except PermissionError:
        unprivileged = True
offloop.configure(threads=2)
barrier = threading.Barrier(2, timeout=30)
def tid():
    barrier.wait()
    return threading.get_native_id()
pool = [threading.Thread(target=lambda: tids.append(offloop.blocking.run(tid)))
        for _ in range(2)]
tids = []
for t in pool: t.start()
for t in pool: t.join()
me = threading.get_native_id()
print(json.dumps({
    "workers": [[os.sched_getscheduler(t), os.getpriority(os.PRIO_PROCESS, t),
                 slice_of(t)] for t in sorted(set(tids))],
    "nice": os.getpriority(os.PRIO_PROCESS, 0), "slice": slice_of(me),
    "unprivileged": unprivileged}))
"""


def report(priority, expect_warning=False, start_nice=None,
           drop_root=False):
    env = dict(os.environ)
    env.pop("OFFLOOP_WORKER_PRIORITY", None)
    if priority is not None:
        env["OFFLOOP_WORKER_PRIORITY"] = priority
    argv = [sys.executable, "-c", REPORT_WORKERS]
    argv.append(str(start_nice or 0))
    if drop_root:
        argv.append("drop-root")
    out = subprocess.run(argv, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    if expect_warning:
        assert "RuntimeWarning: OFFLOOP_WORKER_PRIORITY=" in out.stderr
        assert repr(priority)[:60] in out.stderr
    else:
        assert out.stderr == ""
    got = json.loads(out.stdout)
    assert len(got["workers"]) == 2
    return got


def assert_normal(got, nice_increment):
    """Both workers: normal policy at the starting nice + increment, capped
    at 19, with the long slice where the kernel has custom slices."""
    nice = min(19, got["nice"] + nice_increment)
    for policy, worker_nice, slice_ns in got["workers"]:
        assert (policy, worker_nice) == (os.SCHED_OTHER, nice)
        if got["slice"]:  # the kernel reports slices: it has custom ones
            assert slice_ns == SLICE_NS
            assert got["slice"] != SLICE_NS  # the starting thread's own


def test_default_is_the_normal_policy_with_a_long_slice():
    got = report(None)
    assert_normal(got, 0)


def test_empty_means_the_default():
    assert_normal(report(""), 0)


def test_idle_gives_sched_idle():
    got = report("idle")
    assert [w[0] for w in got["workers"]] == [os.SCHED_IDLE] * 2


@pytest.mark.parametrize("value, nice", [("0", 0), ("7", 7), ("+5", 5),
                                         ("19", 19), ("007", 7)])
def test_a_number_is_a_nice_increment(value, nice):
    assert_normal(report(value), nice)


@pytest.mark.parametrize("value, nice", [("5", 5), ("19", 19), (None, 0)])
def test_the_increment_adds_to_the_starting_threads_nice(value, nice):
    got = report(value, start_nice=3)
    assert got["nice"] == 3
    assert_normal(got, nice)  # 3 + 19 is capped at 19


@pytest.mark.parametrize("value", [
    "low", "IDLE", "batch", " 5", "5 ", "1_0", "3.5", "0x5", "+", "+-5",
    "-5", "-0", "20", "+40", "9" * 5000, "\uff15"])
def test_anything_else_warns_and_keeps_the_default(value):
    assert_normal(report(value, expect_warning=True), 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops root to test without")
def test_the_default_needs_no_privileges():
    """An unprivileged process gets the default too: a slice can be set
    freely, where leaving SCHED_IDLE or lowering a nice value cannot."""
    got = report(None, drop_root=True)
    assert got["unprivileged"]
    assert_normal(got, 0)


@pytest.mark.skipif(
    os.environ.get("OFFLOOP_WORKER_PRIORITY", "") != "",
    reason="this process's workers run at OFFLOOP_WORKER_PRIORITY")
async def test_the_loop_thread_keeps_its_priority():
    """Submitting never changes the submitting thread's own scheduling."""
    me = threading.get_native_id()
    before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0),
              slice_of(me))
    worker = await offloop.run(threading.get_native_id)
    assert worker != me
    assert os.sched_getscheduler(worker) == os.SCHED_OTHER
    assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0),
            slice_of(me)) == before
    if before[2]:
        assert slice_of(worker) == SLICE_NS != before[2]


def test_sched_getattr_reads_a_slice_the_test_sets():
    """The slice reader in these tests sees what sched_setattr sets: the
    slice assertions above can fail."""
    if SCHED_GETATTR is None:
        pytest.skip("sched_getattr's number is unknown on this machine")
    code = SLICE_OF + """
import ctypes, struct, threading
libc = ctypes.CDLL(None, use_errno=True)
attr = struct.pack("IIQiIQQQ", 48, 0, 0, 0, 0, 3_000_000, 0, 0)
nr = {"x86_64": 314, "aarch64": 274}[__import__("platform").machine()]
rc = libc.syscall(nr, 0, ctypes.create_string_buffer(attr, 48), 0)
print(rc, slice_of(threading.get_native_id()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rc, got = out.stdout.split()
    if got in ("0", "None"):
        pytest.skip("no custom slices on this kernel (Linux < 6.12)")
    assert (rc, int(got)) == ("0", 3_000_000)
