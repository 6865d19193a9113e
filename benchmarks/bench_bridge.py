#!/usr/bin/env python
"""Benchmark offloop's bridge (C pool -> eventfd -> asyncio future).

Prints, for each event loop (asyncio, uvloop), per-job costs and the ratio
of offloop against its baselines, each measured side by side in one run:

1. ``gather`` of N ``offloop._testing.noop()`` jobs, against
   ``loop.run_in_executor(None, f)``, ``asyncio.to_thread(f)``,
   ``anyio.to_thread.run_sync(f)`` and the floor (N futures from
   ``loop.create_future()`` resolved in one callback);
2. one ``noop()`` awaited at a time, against ``run_in_executor``;
3. ``offloop.run(f)`` gathered N times, against ``asyncio.to_thread(f)``;
4. loop responsiveness: the overshoot of ``asyncio.sleep(0.001)`` on an idle
   loop and while every worker runs back-to-back 5 ms ``spin`` jobs (and,
   for comparison, the same load as ``hashlib.sha256`` in a thread pool).

Every measured round goes to ``benchmarks/results/bench_bridge-<ts>.csv``.
See ``benchmarks/README.md`` for the method and its biases.

Usage::

    python benchmarks/bench_bridge.py              # about 2 minutes
    python benchmarks/bench_bridge.py --quick      # smoke run, ~20 s
    python benchmarks/bench_bridge.py --loops uvloop --rounds 9 --threads 2
"""

import argparse
import asyncio
import concurrent.futures
import datetime
import functools
import hashlib
import os
import platform
import statistics
import sys
import time

from _common import (
    Feeder,
    Recorder,
    fmt_us,
    git_commit,
    loaded_probe,
    loop_factories,
    machine,
    percentile,
    probe,
    probe_bare_wakeups,
    run_rounds,
    steal_pct,
    steal_ticks,
    verdict,
)

# Goals (see DESIGN.md, "One job, end to end").  Ratios are "times faster
# than the baseline" unless noted.
GOAL_FLOOR_MAX = 1.5  # offloop per-job cost / floor per-job cost
GOAL_EXECUTOR = {"asyncio": 20.0, "uvloop": 15.0}
GOAL_ANYIO = 60.0
GOAL_SEQ_EXECUTOR = {"asyncio": 4.0, "uvloop": 3.0}
GOAL_RUN_TO_THREAD = 5.0
GOAL_P99_EXTRA_MS = 0.5  # loaded p99 overshoot - idle p99 overshoot

SPIN_JOB_S = 0.005  # one CPU job of the responsiveness test


def noop_py():
    """The trivial Python function the thread-pool baselines call."""


# ---------------------------------------------------------------- helpers

RECORD_FIELDS = ("loop", "case", "impl", "round", "n", "total_s",
                 "us_per_job", "p50_us", "p99_us", "max_us", "wakeups",
                 "resolved", "note")


def record(rec, loop, case, impl, rnd, n, total_s=None, **extra):
    """One CSV row: the round's total and per-job cost, and ``extra``."""
    row = {
        "loop": loop,
        "case": case,
        "impl": impl,
        "round": rnd,
        "n": n,
        "total_s": "" if total_s is None else f"{total_s:.6f}",
        "us_per_job": "" if total_s is None else f"{total_s / n * 1e6:.4f}",
    }
    for k, v in extra.items():
        row[k] = f"{v:.4f}" if isinstance(v, float) else v
    rec.add(**row)


# ------------------------------------------------- case 1: gather N jobs


async def gather_offloop(n):
    from offloop import _testing

    noop = _testing.noop
    t0 = time.perf_counter()
    futs = [noop() for _ in range(n)]
    await asyncio.gather(*futs)
    return time.perf_counter() - t0


async def gather_floor(n):
    loop = asyncio.get_running_loop()

    def resolve_all(futs):
        for f in futs:
            f.set_result(None)

    t0 = time.perf_counter()
    futs = [loop.create_future() for _ in range(n)]
    loop.call_soon(resolve_all, futs)
    await asyncio.gather(*futs)
    return time.perf_counter() - t0


async def gather_executor(n):
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    futs = [loop.run_in_executor(None, noop_py) for _ in range(n)]
    await asyncio.gather(*futs)
    return time.perf_counter() - t0


async def gather_to_thread(n):
    t0 = time.perf_counter()
    await asyncio.gather(*[asyncio.to_thread(noop_py) for _ in range(n)])
    return time.perf_counter() - t0


async def gather_anyio(n):
    import anyio.to_thread

    run_sync = anyio.to_thread.run_sync
    t0 = time.perf_counter()
    await asyncio.gather(*[run_sync(noop_py) for _ in range(n)])
    return time.perf_counter() - t0


async def gather_offloop_run(n):
    import offloop

    run = offloop.run
    t0 = time.perf_counter()
    await asyncio.gather(*[run(noop_py) for _ in range(n)])
    return time.perf_counter() - t0


async def measure_rounds(impls, n, rounds, warmup, on_result):
    """run_rounds() of (name, coroutine function of n) pairs, each with
    offloop.stats() read before and after; on_result(name, rnd, dt, s0,
    s1) per recorded round.  Returns {name: [seconds per round]}.
    """
    import offloop

    async def counted(fn):
        s0 = offloop.stats()
        dt = await fn(n)
        return dt, s0, offloop.stats()

    res = await run_rounds(
        [(name, functools.partial(counted, fn)) for name, fn in impls],
        rounds, warmup, lambda name, rnd, v: on_result(name, rnd, *v))
    return {name: [v[0] for v in values] for name, values in res.items()}


async def case_gather(ctx):
    loopname, n, rec = ctx["loop"], ctx["n"], ctx["rec"]
    impls = [
        ("offloop", gather_offloop),
        ("floor", gather_floor),
        ("run_in_executor", gather_executor),
        ("to_thread", gather_to_thread),
    ]
    if ctx["anyio"]:
        impls.append(("anyio", gather_anyio))
    batches = []

    def on_result(name, rnd, dt, s0, s1):
        extra = {}
        if name == "offloop":
            wk = s1["wakeups"] - s0["wakeups"]
            rs = s1["resolved"] - s0["resolved"]
            extra = {"wakeups": wk, "resolved": rs}
            batches.append((rs, wk))
        record(rec, loopname, "gather_noop", name, rnd, n, dt, **extra)

    res = await measure_rounds(
        impls, n, ctx["rounds"], ctx["warmup"], on_result
    )
    best = {k: min(v) / n * 1e6 for k, v in res.items()}
    off = best["offloop"]
    parts = [f"[{loopname}] gather {n} noop: offloop {fmt_us(off)} us/job"]
    r = off / best["floor"]
    ok = r <= GOAL_FLOOR_MAX
    ctx["goals"].append(("gather vs floor", ok))
    parts.append(
        f"floor {fmt_us(best['floor'])}"
        f" ({r:.2f}x, goal <={GOAL_FLOOR_MAX}x {verdict(ok)})"
    )
    r = best["run_in_executor"] / off
    g = GOAL_EXECUTOR[loopname]
    ok = r >= g
    ctx["goals"].append(("gather vs run_in_executor", ok))
    parts.append(
        f"run_in_executor {fmt_us(best['run_in_executor'])}"
        f" ({r:.1f}x faster, goal >={g:g}x {verdict(ok)})"
    )
    r = best["to_thread"] / off
    parts.append(f"to_thread {fmt_us(best['to_thread'])} ({r:.1f}x faster)")
    if "anyio" in best:
        r = best["anyio"] / off
        ok = r >= GOAL_ANYIO
        ctx["goals"].append(("gather vs anyio", ok))
        parts.append(
            f"anyio {fmt_us(best['anyio'])}"
            f" ({r:.1f}x faster, goal >={GOAL_ANYIO:g}x {verdict(ok)})"
        )
    print(" | ".join(parts), flush=True)
    rs = sum(b[0] for b in batches)
    wk = sum(b[1] for b in batches)
    per_round = ", ".join(str(b[1]) for b in batches)
    print(
        f"[{loopname}]   offloop batching: {rs / max(wk, 1):.0f}"
        " futures resolved per eventfd wakeup"
        f" (wakeups per round of {n}: {per_round})",
        flush=True,
    )


# --------------------------------------- case 2: one job awaited at a time


async def seq_offloop(m, lat):
    from offloop import _testing

    noop = _testing.noop
    pc = time.perf_counter
    t0 = pc()
    for _ in range(m):
        s = pc()
        await noop()
        lat.append(pc() - s)
    return pc() - t0


async def seq_executor(m, lat):
    loop = asyncio.get_running_loop()
    pc = time.perf_counter
    t0 = pc()
    for _ in range(m):
        s = pc()
        await loop.run_in_executor(None, noop_py)
        lat.append(pc() - s)
    return pc() - t0


async def case_sequential(ctx):
    loopname, m, rec = ctx["loop"], ctx["seq"], ctx["rec"]
    impls = [("offloop", seq_offloop), ("run_in_executor", seq_executor)]
    lats = {k: [] for k, _ in impls}

    async def one(fn):
        lat = []
        dt = await fn(m, lat)
        return dt, lat

    def on_round(name, rnd, value):
        dt, lat = value
        lats[name].extend(lat)
        record(
            rec,
            loopname,
            "sequential_noop",
            name,
            rnd,
            m,
            dt,
            p50_us=percentile(lat, 50) * 1e6,
            p99_us=percentile(lat, 99) * 1e6,
            max_us=max(lat) * 1e6,
        )

    res = await run_rounds(
        [(name, functools.partial(one, fn)) for name, fn in impls],
        ctx["rounds"], ctx["warmup"], on_round)
    best = {k: min(v[0] for v in vs) / m * 1e6 for k, vs in res.items()}
    pct = {}
    for k, v in lats.items():
        pct[k] = (percentile(v, 50) * 1e6, percentile(v, 99) * 1e6)
    r = best["run_in_executor"] / best["offloop"]
    g = GOAL_SEQ_EXECUTOR[loopname]
    ok = r >= g
    ctx["goals"].append(("sequential vs run_in_executor", ok))
    print(
        f"[{loopname}] sequential {m} noop:"
        f" offloop {fmt_us(best['offloop'])} us/job"
        f" (p50 {fmt_us(pct['offloop'][0])}, p99 {fmt_us(pct['offloop'][1])})"
        f" | run_in_executor {fmt_us(best['run_in_executor'])}"
        f" (p50 {fmt_us(pct['run_in_executor'][0])},"
        f" p99 {fmt_us(pct['run_in_executor'][1])})"
        f" ({r:.1f}x faster, goal >={g:g}x {verdict(ok)})",
        flush=True,
    )


# ------------------------------------- case 3: offloop.run vs to_thread


async def case_run(ctx):
    loopname, n, rec = ctx["loop"], ctx["n"], ctx["rec"]
    impls = [
        ("offloop.run", gather_offloop_run),
        ("to_thread", gather_to_thread),
    ]
    batches = []

    def on_result(name, rnd, dt, s0, s1):
        extra = {}
        if name == "offloop.run":
            wk = s1["wakeups"] - s0["wakeups"]
            rs = s1["resolved"] - s0["resolved"]
            extra = {"wakeups": wk, "resolved": rs}
            batches.append((rs, wk))
        record(rec, loopname, "gather_run_py", name, rnd, n, dt, **extra)

    res = await measure_rounds(
        impls, n, ctx["rounds"], ctx["warmup"], on_result
    )
    best = {k: min(v) / n * 1e6 for k, v in res.items()}
    r = best["to_thread"] / best["offloop.run"]
    ok = r >= GOAL_RUN_TO_THREAD
    ctx["goals"].append(("run vs to_thread", ok))
    rs = sum(b[0] for b in batches)
    wk = sum(b[1] for b in batches)
    print(
        f"[{loopname}] gather {n} run(noop_py):"
        f" offloop.run {fmt_us(best['offloop.run'])} us/job"
        f" | to_thread {fmt_us(best['to_thread'])}"
        f" ({r:.1f}x faster, goal >={GOAL_RUN_TO_THREAD:g}x {verdict(ok)})"
        f" | {rs / max(wk, 1):.0f} futures/wakeup",
        flush=True,
    )


# ------------------------------------------ case 4: loop responsiveness


def calibrate_spin(target_s):
    from offloop import _testing

    n = 1_000_000
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        _testing.blocking.spin(n)
        best = min(best, time.perf_counter() - t0)
    return max(1, int(n * target_s / best))


def calibrate_sha256(target_s):
    buf = bytes(1 << 20)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        hashlib.sha256(buf)
        best = min(best, time.perf_counter() - t0)
    size = max(1 << 16, int(len(buf) * target_s / best))
    return bytes(size)


async def case_responsiveness(ctx):
    """Idle and loaded phases alternate in blocks, so drift hits both."""
    import offloop
    from offloop import _testing

    loopname, samples, rec = ctx["loop"], ctx["samples"], ctx["rec"]
    blocks = ctx["blocks"]
    per_block = max(1, samples // blocks)
    threads = offloop.stats()["threads"]
    spin_n = ctx["spin_n"]
    loop = asyncio.get_running_loop()
    ex = None

    async def idle():
        return await probe(per_block), None, None, None

    async def offloop_spin():
        feeder = Feeder(lambda: _testing.spin(spin_n), threads)
        return await loaded_probe(feeder, per_block)

    async def executor_sha256():
        buf = ctx["sha_buf"]
        feeder = Feeder(
            lambda: loop.run_in_executor(ex, hashlib.sha256, buf), threads
        )
        return await loaded_probe(feeder, per_block)

    async def bare_wakeups():
        return await probe_bare_wakeups(threads / SPIN_JOB_S, per_block), \
            None, None, None

    phases = [("idle", idle), ("offloop_spin", offloop_spin),
              ("bare_wakeups", bare_wakeups)]
    if ctx["executor_load"]:
        # As many threads as offloop has workers; sha256 releases the GIL.
        ex = concurrent.futures.ThreadPoolExecutor(threads)
        await asyncio.gather(
            *[loop.run_in_executor(ex, noop_py) for _ in range(threads)]
        )
        phases.append(("executor_sha256", executor_sha256))

    await probe(min(200, per_block))  # warm-up
    lats = {name: [] for name, _ in phases}
    cpu = {name: [] for name, _ in phases}
    submit = {name: 0.0 for name, _ in phases}

    def on_block(name, b, value):
        lat, cores, jobs, sub = value
        lats[name].extend(lat)
        note = ""
        if cores is not None:
            cpu[name].append(cores)
            submit[name] = max(submit[name], sub)
            note = (
                f"cpu_jobs={jobs} process_cpu_cores={cores:.2f}"
                f" max_submit_us={sub * 1e6:.1f}"
            )
        record(
            rec,
            loopname,
            "sleep_overshoot",
            name,
            b,
            len(lat),
            p50_us=percentile(lat, 50) * 1e6,
            p99_us=percentile(lat, 99) * 1e6,
            max_us=max(lat) * 1e6,
            note=note,
        )

    try:
        await run_rounds(phases, blocks, 0, on_block)
    finally:
        if ex is not None:
            ex.shutdown()

    res = {}
    for name, v in lats.items():
        res[name] = (
            percentile(v, 50) * 1e3,
            percentile(v, 99) * 1e3,
            max(v) * 1e3,
        )
        record(
            rec,
            loopname,
            "sleep_overshoot",
            name,
            "all",
            len(v),
            p50_us=res[name][0] * 1e3,
            p99_us=res[name][1] * 1e3,
            max_us=max(v) * 1e6,
        )
    i50, i99, imax = res["idle"]
    l50, l99, lmax = res["offloop_spin"]
    extra = l99 - i99
    ok = extra <= GOAL_P99_EXTRA_MS
    ctx["goals"].append(("sleep p99 under load", ok))
    cores = statistics.mean(cpu["offloop_spin"])
    line = (
        f"[{loopname}] sleep(1ms) overshoot, {blocks}x{per_block} samples:"
        f" idle p50 {i50:.3f} p99 {i99:.3f} max {imax:.1f} ms"
        f" | {threads} workers on 5 ms spin ({cores:.2f} CPUs busy)"
        f" p50 {l50:.3f} p99 {l99:.3f} max {lmax:.1f} ms"
        f" ({extra:+.3f} ms, goal <=+{GOAL_P99_EXTRA_MS} ms {verdict(ok)};"
        f" slowest submit {submit['offloop_spin'] * 1e6:.0f} us)"
    )
    w50, w99, wmax = res["bare_wakeups"]
    line += (
        f" | bare wakeups, {threads / SPIN_JOB_S:.0f}/s at random, no CPU"
        " work:"
        f" p50 {w50:.3f} p99 {w99:.3f} max {wmax:.1f} ms ({w99 - i99:+.3f})"
    )
    if "executor_sha256" in res:
        e50, e99, emax = res["executor_sha256"]
        ecores = statistics.mean(cpu["executor_sha256"])
        line += (
            f" | {threads} executor threads on 5 ms sha256"
            f" ({ecores:.2f} CPUs busy) p50 {e50:.3f} p99 {e99:.3f}"
            f" max {emax:.1f} ms ({e99 - i99:+.3f})"
        )
    print(line, flush=True)


# ------------------------------------------------------------------ main


async def bench_loop(ctx):
    loop = asyncio.get_running_loop()
    # Start the default executor's threads outside any timed section.
    await asyncio.gather(
        *[loop.run_in_executor(None, noop_py) for _ in range(64)]
    )
    for case in ctx["cases"]:
        await {
            "gather": case_gather,
            "sequential": case_sequential,
            "run": case_run,
            "responsiveness": case_responsiveness,
        }[case](ctx)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="measured rounds per case (default 5)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="unrecorded warm-up rounds (default 1)",
    )
    ap.add_argument(
        "--n", type=int, default=10_000, help="jobs per gather (default 10000)"
    )
    ap.add_argument(
        "--seq",
        type=int,
        default=5_000,
        help="sequential awaits per round (default 5000)",
    )
    ap.add_argument(
        "--samples",
        type=int,
        default=2_000,
        help="sleep probes per phase (default 2000)",
    )
    ap.add_argument(
        "--blocks",
        type=int,
        default=4,
        help="idle/loaded alternations of the sleep probe (default 4)",
    )
    ap.add_argument(
        "--loops",
        default="asyncio,uvloop",
        help="comma-separated: asyncio,uvloop",
    )
    ap.add_argument(
        "--cases",
        default="gather,sequential,run,responsiveness",
        help="comma-separated subset of gather,sequential,run,responsiveness",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="offloop.configure(threads=N)",
    )
    ap.add_argument(
        "--worker-priority",
        default=None,
        help="OFFLOOP_WORKER_PRIORITY for offloop's workers: unset (the"
        " default: normal policy, longest slice), idle (SCHED_IDLE) or a"
        " nice increment N",
    )
    ap.add_argument(
        "--no-executor-load",
        action="store_true",
        help="skip the sha256 thread-pool load",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="fast smoke run (small n, 2 rounds)",
    )
    ap.add_argument(
        "--csv",
        default=None,
        help="CSV path (default benchmarks/results/bench_bridge-<ts>.csv)",
    )
    args = ap.parse_args(argv)

    if args.quick:
        args.rounds = min(args.rounds, 2)
        args.n = min(args.n, 2_000)
        args.seq = min(args.seq, 1_000)
        args.samples = min(args.samples, 400)
        args.blocks = min(args.blocks, 2)
    if args.worker_priority is not None:
        os.environ["OFFLOOP_WORKER_PRIORITY"] = args.worker_priority

    import offloop

    if args.threads is not None:
        offloop.configure(threads=args.threads)

    try:
        import anyio.to_thread  # noqa: F401

        have_anyio = True
    except ImportError:
        have_anyio = False

    factories = loop_factories(args.loops, ap.error)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]

    ts = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    commit = git_commit()
    versions = [f"offloop {offloop.__version__} @ {commit}"]
    if "uvloop" in factories:
        versions.append(f"uvloop {sys.modules['uvloop'].__version__}")
    if have_anyio:
        from importlib.metadata import version

        versions.append(f"anyio {version('anyio')}")
    print(f"# bench_bridge {ts}", flush=True)
    print(f"# machine: {machine()}")
    print(
        f"# python {platform.python_version()}"
        f" ({platform.python_implementation()}) | {' | '.join(versions)}"
    )
    print(
        f"# loops {','.join(factories)}"
        f" | offloop threads={offloop.stats()['threads']}"
        f" worker_priority="
        f"{os.environ.get('OFFLOOP_WORKER_PRIORITY', 'default (normal policy, long slice)')}"
        f" | rounds={args.rounds} (+{args.warmup} warm-up),"
        " best round reported"
        f" | n={args.n} seq={args.seq} samples={args.samples}"
    )

    spin_n = calibrate_spin(SPIN_JOB_S) if "responsiveness" in cases else 0
    sha_buf = (
        calibrate_sha256(SPIN_JOB_S)
        if "responsiveness" in cases and not args.no_executor_load
        else None
    )
    if spin_n:
        print(
            f"# 5 ms CPU job: spin({spin_n});"
            f" sha256 of {len(sha_buf) if sha_buf else 0} bytes",
            flush=True,
        )

    rec = Recorder("bench_bridge", RECORD_FIELDS, ts, commit)
    goals = []
    t_start, steal_start = time.perf_counter(), steal_ticks()
    for name, factory in factories.items():
        ctx = {
            "loop": name,
            "n": args.n,
            "seq": args.seq,
            "samples": args.samples,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "rec": rec,
            "anyio": have_anyio,
            "goals": goals,
            "cases": cases,
            "spin_n": spin_n,
            "sha_buf": sha_buf,
            "blocks": args.blocks,
            "executor_load": not args.no_executor_load,
        }
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(bench_loop(ctx))

    path = rec.write(args.csv)
    passed = sum(1 for _, ok in goals if ok)
    missed = [g for g, ok in goals if not ok]
    print(
        f"# goals: {passed}/{len(goals)} PASS"
        + (f"; MISS: {', '.join(missed)}" if missed else "")
        + f" | {time.perf_counter() - t_start:.0f} s, host steal "
        + f"{steal_pct(steal_start, steal_ticks()):.0f}%"
        + f" | csv: {os.path.relpath(path)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
