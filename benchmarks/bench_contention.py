#!/usr/bin/env python
"""Native jobs beside busy sibling processes: offloop's worker priority.

An awaited ``offloop.top_k`` (k=10, one query, 20,000 x 384 float32 unit
rows, ``normalized=True``), one call at a time, on an idle host and then
with busy normal-priority sibling processes on every core (two on two
CPUs: what sibling gunicorn or uvicorn workers in the same container do).
Each worker priority (``OFFLOOP_WORKER_PRIORITY``, read when the pool
starts) runs in its own child process, beside a child that awaits the same
search in numpy through ``asyncio.to_thread`` (the baseline); the children
take turns, order rotated from round to round, on asyncio and on uvloop.

It prints p50, p99 and max per contender, idle and contended, the ratios
the goals are stated in (contended p50 over the contender's own idle p50;
offloop's contended p50 over ``asyncio.to_thread``'s), PASS/MISS for the
default priority, and writes every measurement to
``benchmarks/results/bench_contention-<timestamp>.csv``.

    python benchmarks/bench_contention.py [--quick] [--rounds 3]
        [--priorities default,idle,5] [--busy python|numpy]
        [--loops asyncio,uvloop]
"""

import argparse
import asyncio
import csv
import datetime
import json
import os
import pathlib
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
ROWS, DIM, K = 20_000, 384, 10
BASELINE = "asyncio.to_thread"
GOAL_OVER_IDLE = 2.0      # offloop contended p50 / its idle p50, at most
GOAL_OVER_THREAD = 0.5    # offloop contended p50 / to_thread's, at most
BUSY_CODE = {
    # Pure Python holds its own GIL, in its own process: a core kept busy.
    "python": "while True: pass",
    # numpy with the GIL released most of the time, the same to the kernel.
    "numpy": ("import numpy\na = numpy.ones(1 << 16)\n"
              "while True: a.sum()"),
}


# ---- child: one contender, driven through stdin --------------------------


def numpy_top_k(q, m, k):
    """Top-k of unit rows by dot product, best first: what to_thread runs."""
    import numpy

    scores = m @ q
    idx = numpy.argpartition(-scores, k - 1)[:k]
    return scores[idx[numpy.argsort(-scores[idx], kind="stable")]], idx


def worker_policy():
    """How offloop's workers are scheduled, read from the kernel."""
    import offloop

    names = {getattr(os, n): n for n in
             ("SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE")}
    barrier = threading.Barrier(2, timeout=30)

    def tid():
        barrier.wait()  # one job per worker
        return threading.get_native_id()

    tids = []
    threads = [threading.Thread(
        target=lambda: tids.append(offloop.blocking.run(tid)))
        for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = []
    for t in sorted(set(tids)):
        policy = names.get(os.sched_getscheduler(t), "?")
        nice = os.getpriority(os.PRIO_PROCESS, t) - os.getpriority(
            os.PRIO_PROCESS, 0)
        out.append(f"{policy} nice {nice:+d}")
    return ", ".join(sorted(set(out)))


def child(kind):
    """Answer "<loop> <calls> <seconds>" lines with JSON latency lists."""
    import numpy

    import offloop

    rng = numpy.random.default_rng(11)
    m = rng.standard_normal((ROWS, DIM), dtype=numpy.float32)
    m /= numpy.linalg.norm(m, axis=1, keepdims=True)
    queries = [m[i] + rng.standard_normal(DIM, dtype=numpy.float32) * 0.1
               for i in rng.integers(0, ROWS, 16)]
    if kind == BASELINE:
        def call(q):
            return asyncio.to_thread(numpy_top_k, q, m, K)
        policy = "numpy, default executor"
    else:
        def call(q):
            return offloop.top_k(q, m, K, normalized=True)
        policy = worker_policy()
    loops = {}

    async def measure(calls, seconds):
        for q in queries[:4]:  # warm-up: threads started, caches warm
            await call(q)
        lat = []
        stop_at = time.perf_counter() + seconds
        while len(lat) < calls and time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await call(queries[len(lat) % len(queries)])
            lat.append(time.perf_counter() - t0)
        return lat

    print(json.dumps({"policy": policy}), flush=True)
    for line in sys.stdin:
        loop_name, calls, seconds = line.split()
        if loop_name not in loops:
            if loop_name == "uvloop":
                import uvloop
                loops[loop_name] = uvloop.new_event_loop()
            else:
                loops[loop_name] = asyncio.new_event_loop()
        lat = loops[loop_name].run_until_complete(
            measure(int(calls), float(seconds)))
        print(json.dumps(lat), flush=True)
    for loop in loops.values():
        loop.close()


# ---- parent ---------------------------------------------------------------


class Contender:
    def __init__(self, name, env):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", name], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.policy = json.loads(self.proc.stdout.readline())["policy"]

    def measure(self, loop, calls, seconds):
        self.proc.stdin.write(f"{loop} {calls} {seconds}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def start_busy(n, kind):
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_CODE[kind]],
                              stdin=subprocess.DEVNULL)
             for _ in range(n)]
    time.sleep(0.5)  # let them import and reach their loop
    return procs


def stop(procs):
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait()


def steal_ticks():
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    ticks = [int(x) for x in fields]
    return ticks[7], sum(ticks[:8])


def steal_pct(before, after):
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total else 0.0


def p99(values):
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def label(priority):
    return "offloop " + (priority if priority != "default" else
                         "default")


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                              cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    except OSError:
        return "?"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--priorities", default="default,idle,5",
                        help="comma-separated OFFLOOP_WORKER_PRIORITY "
                             "values, one child each ('default': unset)")
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200,
                        help="awaited calls per contender per round and "
                             "phase (default 200)")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="at most this long per contender per round and"
                             " phase (a starved one gets fewer calls)")
    parser.add_argument("--busy", choices=sorted(BUSY_CODE),
                        default="python", help="what the siblings run")
    parser.add_argument("--busy-procs", type=int, default=os.cpu_count(),
                        help="busy sibling processes (default: one per CPU)")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="OPENBLAS_NUM_THREADS of the children (default "
                             "1; 0: the library's default)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of at most 50 calls, 2 s")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    if args.quick:
        args.rounds, args.calls, args.seconds = 1, 50, 2.0
    loops = args.loops.split(",")
    for loop in loops:
        if loop not in ("asyncio", "uvloop"):
            parser.error(f"--loops: unknown event loop {loop!r}")
    priorities = args.priorities.split(",")

    env = dict(os.environ)
    env.pop("OFFLOOP_WORKER_PRIORITY", None)
    if args.blas_threads:
        env["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)
    else:
        env.pop("OPENBLAS_NUM_THREADS", None)
    load1, load5, _ = os.getloadavg()
    print(f"# bench_contention: {platform.machine()}, {os.cpu_count()} CPUs,"
          f" Linux {platform.release()}, Python "
          f"{platform.python_version()}, commit {commit()}, load average "
          f"{load1:.2f} / {load5:.2f} (1 / 5 min)")
    print(f"# awaited top-{K} over {ROWS:,} x {DIM} float32, one call at a "
          f"time; at most {args.calls} calls or {args.seconds:g} s per "
          f"contender, loop and phase; {args.rounds} rounds; contended: "
          f"{args.busy_procs} busy {args.busy} processes at nice 0; "
          f"OpenBLAS threads {env.get('OPENBLAS_NUM_THREADS', 'default')}")

    contenders = []
    try:
        for p in priorities:
            cenv = dict(env)
            if p != "default":
                cenv["OFFLOOP_WORKER_PRIORITY"] = p
            contenders.append(Contender(label(p), cenv))
        contenders.append(Contender(BASELINE, env))
        for c in contenders:
            print(f"# {c.name}: {c.policy}")
        lat, rows = run_rounds(args, loops, contenders)
    finally:
        for c in contenders:
            c.close()
    report(args, loops, contenders, lat)

    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"bench_contention-{stamp}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"csv: {path.relative_to(ROOT)}")


def run_rounds(args, loops, contenders):
    """Idle then contended, every contender on every loop, per round."""
    lat = {}
    rows = []
    for r in range(args.rounds):
        for phase in ("idle", "contended"):
            busy = (start_busy(args.busy_procs, args.busy)
                    if phase == "contended" else [])
            try:
                s0 = steal_ticks()
                for loop in loops:
                    k = r % len(contenders)
                    for c in contenders[k:] + contenders[:k]:
                        got = c.measure(loop, args.calls, args.seconds)
                        lat.setdefault((c.name, loop, phase), []).extend(got)
                        rows.append({
                            "round": r, "phase": phase, "loop": loop,
                            "contender": c.name, "policy": c.policy,
                            "calls": len(got),
                            "p50_ms": statistics.median(got) * 1e3,
                            "p99_ms": p99(got) * 1e3,
                            "max_ms": max(got) * 1e3})
                steal = steal_pct(s0, steal_ticks())
            finally:
                stop(busy)
            print(f"# round {r + 1}/{args.rounds}, {phase}: steal "
                  f"{steal:.0f}%", flush=True)
    return lat, rows


def report(args, loops, contenders, lat):
    default = label("default")
    for loop in loops:
        base = statistics.median(lat[BASELINE, loop, "contended"])
        print(f"[{loop}] {'contender':<22}{'idle p50':>9}{'max':>8}"
              f"{'busy p50':>10}{'p99':>8}{'max':>8}{'calls':>7}"
              f"{'busy/idle':>11}{'/to_thread':>11}   (ms)")
        for c in contenders:
            idle = lat[c.name, loop, "idle"]
            busy = lat[c.name, loop, "contended"]
            i50, b50 = statistics.median(idle), statistics.median(busy)
            print(f"[{loop}] {c.name:<22}{i50 * 1e3:9.2f}"
                  f"{max(idle) * 1e3:8.1f}{b50 * 1e3:10.2f}"
                  f"{p99(busy) * 1e3:8.1f}{max(busy) * 1e3:8.1f}"
                  f"{len(busy):7d}{b50 / i50:10.2f}x{b50 / base:10.2f}x")
        if default not in {c.name for c in contenders}:
            continue
        i50 = statistics.median(lat[default, loop, "idle"])
        b50 = statistics.median(lat[default, loop, "contended"])
        ok1 = b50 <= GOAL_OVER_IDLE * i50
        ok2 = b50 <= GOAL_OVER_THREAD * base
        print(f"[{loop}] goal: default contended p50 <= "
              f"{GOAL_OVER_IDLE:g}x its idle p50: {b50 / i50:.2f}x  "
              f"{'PASS' if ok1 else 'MISS'}")
        print(f"[{loop}] goal: default contended p50 <= "
              f"{GOAL_OVER_THREAD:g}x asyncio.to_thread's: "
              f"{b50 / base:.2f}x  {'PASS' if ok2 else 'MISS'}")


if __name__ == "__main__":
    sys.exit(main())
