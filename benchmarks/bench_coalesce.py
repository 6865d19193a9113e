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
import platform
import statistics
import sys
import time

import numpy as np

import _common
import offloop


def measures(m, queries, k):
    """(name, async impl) pairs for _common.run_rounds: each returns the
    seconds it took and the stats() deltas of its run."""
    q_all = np.ascontiguousarray(queries)

    async def concurrent():
        await asyncio.gather(*[offloop.top_k(q, m, k=k, normalized=True)
                               for q in queries])

    async def one_at_a_time():
        for q in queries:
            await offloop.top_k(q, m, k=k, normalized=True)

    async def one_call():
        offloop.blocking.top_k(q_all, m, k=k, normalized=True)

    def run(max_batch, coro):
        async def go():
            offloop.configure(max_batch=max_batch)
            before = offloop.stats()
            try:
                seconds = await _common.timed(coro)()
            finally:
                offloop.configure()
            after = offloop.stats()
            return (seconds, after["batches"] - before["batches"],
                    after["batched"] - before["batched"])
        return go

    return [("concurrent_on", run(None, concurrent)),
            ("concurrent_off", run(1, concurrent)),
            ("one_call", run(None, one_call)),
            ("sequential_on", run(None, one_at_a_time)),
            ("sequential_off", run(1, one_at_a_time))]


def report(kind, results, nq):
    def med(name):
        return statistics.median(r[0] for r in results[name])

    on, off, one = med("concurrent_on"), med("concurrent_off"), med(
        "one_call")
    s_on, s_off = med("sequential_on"), med("sequential_off")
    mean_batch = statistics.mean(b2 / b1 if b1 else 1.0
                                 for _, b1, b2 in results["concurrent_on"])
    v = _common.verdict
    print(f"[{kind}] {nq} concurrent one-query top_k: {on * 1e3:.1f} ms "
          f"(mean batch {mean_batch:.1f}); one {nq}-query call "
          f"{one * 1e3:.1f} ms -> {on / one:.2f}x "
          f"(goal <= 1.3x {v(on / one <= 1.3)})")
    print(f"[{kind}]   coalescing off: {off * 1e3:.1f} ms -> on is "
          f"{off / on:.2f}x faster (goal >= 5x {v(off / on >= 5)})")
    print(f"[{kind}]   one at a time: on {s_on * 1e3:.1f} ms, off "
          f"{s_off * 1e3:.1f} ms -> {s_on / s_off:.3f}x "
          f"(goal within 5% {v(abs(s_on / s_off - 1) <= 0.05)})")


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
          f"{_common.machine()}, Python {platform.python_version()}, "
          f"offloop {_common.git_commit()}, "
          f"{offloop.stats()['threads']} threads")
    factories = _common.loop_factories(args.loops, ap.error)
    commit = _common.git_commit()
    rec = _common.Recorder("bench_coalesce", ("loop", "case", "round",
                                              "seconds", "batches",
                                              "batched"),
                           time.strftime("%Y%m%d-%H%M%S"), commit,
                           rows=args.rows, dim=args.dim)
    steal = _common.steal_ticks()
    for kind, factory in factories.items():
        loop = factory()
        try:
            results = loop.run_until_complete(_common.run_rounds(
                measures(m, queries, args.k), args.rounds, warmup=1,
                on_round=lambda name, rnd, v, kind=kind: rec.add(
                    loop=kind, case=name, round=rnd,
                    seconds=f"{v[0]:.6f}", batches=v[1], batched=v[2])))
        finally:
            loop.close()
        report(kind, results, args.queries)
    print(f"# host steal {_common.steal_pct(steal, _common.steal_ticks()):.1f}%"
          f"; rounds written to {rec.write()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
