"""Coalescing: concurrent one-query top_k calls against one multi-query
call, and against the same calls with coalescing turned off.

    python benchmarks/bench_coalesce.py            # ~1-2 min, both loops
    python benchmarks/bench_coalesce.py --quick    # smoke run, small matrix

Cases, each on asyncio and uvloop, rounds interleaved (on, off, one call,
in rotating order), medians printed:

1. 64 concurrent `await offloop.top_k(q_i, m, k=10, normalized=True)`,
   gathered, over 200,000 x 768 unit rows: against one
   `offloop.blocking.top_k(Q, m, ...)` with the 64 queries (goal: at most
   1.3x) and against the same 64 awaits with `configure(max_batch=1)`
   (goal: at least 5x faster).
2. The same 64 queries awaited one at a time, coalescing on and off: no
   companion ever waits, so on must cost what off costs (goal: within 5%).
"""

import argparse
import asyncio
import csv
import gc
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

import offloop

try:
    import uvloop
except ImportError:  # pragma: no cover - in the bench extra
    uvloop = None

RESULTS = pathlib.Path(__file__).with_name("results")


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True,
                              cwd=pathlib.Path(__file__).parent,
                              timeout=10).stdout.strip() or "?"
    except OSError:
        return "?"


def timed(fn):
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_case(loop, m, queries, k, rounds):
    """One loop: per round, three measurements in rotating order."""
    q_all = np.ascontiguousarray(queries)

    async def concurrent():
        await asyncio.gather(*[offloop.top_k(q, m, k=k, normalized=True)
                               for q in queries])

    async def one_at_a_time():
        for q in queries:
            await offloop.top_k(q, m, k=k, normalized=True)

    def with_batch(max_batch, coro):
        offloop.configure(max_batch=max_batch)
        try:
            return timed(lambda: loop.run_until_complete(coro()))
        finally:
            offloop.configure()

    measures = {
        "concurrent_on": lambda: with_batch(None, concurrent),
        "concurrent_off": lambda: with_batch(1, concurrent),
        "one_call": lambda: timed(lambda: offloop.blocking.top_k(
            q_all, m, k=k, normalized=True)),
        "sequential_on": lambda: with_batch(None, one_at_a_time),
        "sequential_off": lambda: with_batch(1, one_at_a_time),
    }
    names = list(measures)
    for name in names:  # warm-up, not recorded
        measures[name]()
    rows = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            before = offloop.stats()
            seconds = measures[name]()
            after = offloop.stats()
            rows.append({"round": r, "case": name, "seconds": seconds,
                         "batches": after["batches"] - before["batches"],
                         "batched": after["batched"] - before["batched"]})
    return rows


def median(rows, case):
    return statistics.median(r["seconds"] for r in rows if r["case"] == case)


def verdict(ok):
    return "ok" if ok else "MISSED"


def report(kind, rows, nq):
    on, off = median(rows, "concurrent_on"), median(rows, "concurrent_off")
    one = median(rows, "one_call")
    s_on, s_off = median(rows, "sequential_on"), median(rows, "sequential_off")
    per = [r for r in rows if r["case"] == "concurrent_on"]
    mean_batch = statistics.mean(
        r["batched"] / r["batches"] if r["batches"] else 1 for r in per)
    print(f"[{kind}] {nq} concurrent one-query top_k: {on * 1e3:.1f} ms "
          f"(mean batch {mean_batch:.1f}); one {nq}-query call "
          f"{one * 1e3:.1f} ms -> {on / one:.2f}x "
          f"(goal <= 1.3x: {verdict(on / one <= 1.3)})")
    print(f"[{kind}]   coalescing off: {off * 1e3:.1f} ms -> on is "
          f"{off / on:.2f}x faster (goal >= 5x: {verdict(off / on >= 5)})")
    print(f"[{kind}]   one at a time: on {s_on * 1e3:.1f} ms, off "
          f"{s_off * 1e3:.1f} ms -> {s_on / s_off:.3f}x "
          f"(goal within 5%: {verdict(abs(s_on / s_off - 1) <= 0.05)})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--loops", default="asyncio,uvloop")
    ap.add_argument("--quick", action="store_true",
                    help="20,000 x 256, 2 rounds: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.dim, args.rounds = 20_000, 256, 2

    rng = np.random.default_rng(2026)
    m = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    queries = list(rng.standard_normal((args.queries, args.dim),
                                       dtype=np.float32))
    print(f"# bench_coalesce: {args.rows:,} x {args.dim} float32 unit rows, "
          f"{args.queries} queries, k={args.k}, {args.rounds} rounds; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, offloop {commit()}, "
          f"{offloop.stats()['threads']} threads")
    factories = {"asyncio": asyncio.new_event_loop}
    if uvloop is not None:
        factories["uvloop"] = uvloop.new_event_loop
    all_rows = []
    for kind in args.loops.split(","):
        if kind not in factories:
            print(f"[{kind}] absent")
            continue
        loop = factories[kind]()
        try:
            rows = run_case(loop, m, queries, args.k, args.rounds)
        finally:
            loop.close()
        report(kind, rows, args.queries)
        all_rows += [dict(r, loop=kind) for r in rows]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench_coalesce-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["loop", "round", "case", "seconds",
                                          "batches", "batched"])
        w.writeheader()
        w.writerows(all_rows)
    print(f"# rounds written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
