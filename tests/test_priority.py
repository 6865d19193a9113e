"""Workers run at a lower scheduling priority than the loop's thread.

By default a worker runs under SCHED_IDLE, so that the event loop (or any
thread of normal priority) preempts it at once.  OFFLOOP_WORKER_PRIORITY=N
keeps the normal policy at nice +N instead; any other value warns at
import and keeps SCHED_IDLE.  The environment is read when
the pool starts, so the variants run in fresh interpreters.
"""

import json
import os
import subprocess
import sys
import threading

import pytest

import offloop

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="per-thread scheduling is Linux's")

# Every worker reports its thread id: a barrier in the job keeps one
# worker from taking them all.
REPORT_WORKERS = """
import json, os, threading
import offloop
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
print(json.dumps([[os.sched_getscheduler(t), os.getpriority(os.PRIO_PROCESS, t)]
                  for t in tids] + [os.getpriority(os.PRIO_PROCESS, 0)]))
"""


def worker_policies(priority, expect_warning=False):
    env = dict(os.environ)
    env.pop("OFFLOOP_WORKER_PRIORITY", None)
    if priority is not None:
        env["OFFLOOP_WORKER_PRIORITY"] = priority
    out = subprocess.run([sys.executable, "-c", REPORT_WORKERS], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if expect_warning:
        assert "RuntimeWarning: OFFLOOP_WORKER_PRIORITY=" in out.stderr
        assert repr(priority) in out.stderr
    else:
        assert out.stderr == ""
    *workers, process_nice = json.loads(out.stdout)
    assert len(workers) == 2
    return workers, process_nice


def test_workers_run_under_sched_idle_by_default():
    workers, _ = worker_policies(None)
    assert [policy for policy, _ in workers] == [os.SCHED_IDLE] * 2


def test_idle_can_be_named():
    workers, _ = worker_policies("idle")
    assert [policy for policy, _ in workers] == [os.SCHED_IDLE] * 2


@pytest.mark.parametrize("nice", [0, 7])
def test_a_number_keeps_the_normal_policy_at_that_nice(nice):
    workers, process_nice = worker_policies(str(nice))
    assert workers == [[os.SCHED_OTHER, process_nice + nice]] * 2


def test_a_negative_number_does_not_raise_the_priority():
    workers, process_nice = worker_policies("-5")
    assert workers == [[os.SCHED_OTHER, process_nice]] * 2


def test_a_number_past_19_means_19():
    workers, process_nice = worker_policies("+40")
    assert workers == [[os.SCHED_OTHER, min(19, process_nice + 19)]] * 2


@pytest.mark.parametrize("value", ["low", " 5", "5 ", "1_0", "3.5"])
def test_anything_else_warns_and_keeps_sched_idle(value):
    workers, _ = worker_policies(value, expect_warning=True)
    assert [policy for policy, _ in workers] == [os.SCHED_IDLE] * 2


@pytest.mark.skipif(
    os.environ.get("OFFLOOP_WORKER_PRIORITY", "idle") not in ("", "idle"),
    reason="this process's workers run at OFFLOOP_WORKER_PRIORITY")
async def test_the_loop_thread_keeps_its_priority():
    """Submitting never changes the submitting thread's own policy."""
    before = os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)
    worker = await offloop.run(threading.get_native_id)
    assert worker != threading.get_native_id()
    assert os.sched_getscheduler(worker) == os.SCHED_IDLE
    assert (os.sched_getscheduler(0),
            os.getpriority(os.PRIO_PROCESS, 0)) == before
