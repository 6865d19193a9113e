#!/usr/bin/env python
"""Benchmark offloop's vector kernels against numpy, the peer libraries
and memory bandwidth.

Prints, measured side by side in one run, for each case the time of
offloop (awaited on an event loop), of numpy and of the peers that users
pick for this work -- faiss-cpu, SimSIMD, NumKong, usearch (called
synchronously, as an endpoint would; a peer that is not installed prints
"absent": ``pip install -e ".[bench]"`` installs them) -- offloop's ratio
against the best peer, and for the memory-bound cases the share of the
machine's memory bandwidth, measured in the same rounds (the fastest of
several multi-threaded streaming reads, benchmarks/README.md):

1. ``cosine_similarity`` of a 768-d pair, awaited (asyncio and uvloop),
   against ``a @ b / (norm(a) * norm(b))``;
2. ``batch_normalize`` of 100,000 x 768 in place, against numpy's best of
   ``x /= norm(x, axis=1, keepdims=True)`` and einsum with ``out=``; and
   of 5,000 x 768, printed beside the seed article's figures;
3. ``top_k``, k=10, one query against 200,000 x 768, pre-normalized rows
   (against matmul + argpartition) and raw rows (against norms + matmul +
   argpartition);
4. ``top_k``, k=10, 64 queries against 200,000 x 768 (pre-normalized);
4b. ``cosine_similarities``, 1 query x 200,000 x 768 (all the scores);
4c. quantized storage: ``top_k`` over the same rows quantized to bfloat16
   and int8 (one query and 64), with and without ``rerank=``, against
   float32, faiss ``IndexScalarQuantizer`` (8-bit) and usearch's exact
   ``i8``/``bf16`` search: time, ratio and recall@10 against exact
   float32, and memory per million vectors;
5. loop lag: the overshoot of ``asyncio.sleep(0.001)`` on an idle loop and
   while back-to-back 100,000 x 768 ``batch_normalize`` jobs keep every
   worker busy (bench_bridge.py's probe, from _common.py), and beside them
   the same probe while a thread only wakes the loop, at the loaded
   phase's rate of completions: the part of the overshoot that any wakeup
   costs.

Every measured round goes to ``benchmarks/results/bench_vectors-<ts>.csv``.
See ``benchmarks/README.md`` for the method and its biases.

Usage::

    python benchmarks/bench_vectors.py            # about 1 minute
    python benchmarks/bench_vectors.py --quick    # smoke run, < 30 s
    python benchmarks/bench_vectors.py --rounds 9 --loops uvloop
"""

import argparse
import concurrent.futures
import datetime
import os
import platform
import time

from _common import (
    Feeder,
    Recorder,
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
    timed,
    verdict,
)

# Goals, from the issue.  Ratios are "times faster than numpy".
GOAL_COSINE_US = 1.0
GOAL_COSINE_RATIO = 3.5
GOAL_NORMALIZE_RATIO = 4.0
GOAL_NORMALIZE_BW = 0.90  # of in-place read+write bandwidth
GOAL_TOPK1_UNIT_RATIO = 1.15
GOAL_TOPK1_UNIT_BW = 0.90  # of read bandwidth
GOAL_SCAN_BW = 0.90  # every scan, of the bandwidth measured beside it
GOAL_SCORES_PEER = 1.1  # best peer's time / offloop's, all scores of 1 query
GOAL_NORMALIZE_PEER = 1.1  # faiss normalize_L2's time / offloop's
GOAL_PAIR_PEER = 1.0  # the sync pair cosine: no slower than the best peer
GOAL_TOPK1_RAW_RATIO = 10.0
GOAL_TOPK64_RATIO = 1.9
GOAL_P99_EXTRA_MS = 0.5

# The seed article's 5,000 x 768 normalization times, in seconds.
SEED_PYTHON_NUMPY_S = 2.3
SEED_RUST_RAYON_S = 0.08

D = 768
K = 10


# ---------------------------------------------------------------- helpers


RECORD_FIELDS = ("loop", "case", "impl", "round", "seconds", "gb_per_s",
                 "note")


def record(rec, loop, case, impl, rnd, seconds, nbytes=None, note=""):
    """One CSV row: the round's seconds, and GB/s when ``nbytes``."""
    row = dict(loop=loop, case=case, impl=impl, round=rnd,
               seconds=f"{seconds:.9f}", note=note)
    if nbytes:
        row["gb_per_s"] = f"{nbytes / seconds / 1e9:.3f}"
    rec.add(**row)


def blas_line():
    """numpy's BLAS, from numpy.show_config()."""
    import numpy

    try:
        cfg = numpy.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        text = f"{blas.get('name')} {blas.get('version')}"
        extra = blas.get("openblas configuration")
        if extra:
            text += f" ({' '.join(extra.split())})"
    except Exception as exc:  # older numpy: no mode="dicts"
        text = f"unknown ({exc.__class__.__name__})"
    env = [f"{v}={os.environ[v]}" for v in ("OPENBLAS_NUM_THREADS",
                                           "OMP_NUM_THREADS")
           if v in os.environ]
    return text + (f" [{' '.join(env)}]" if env else " [threads: default]")


async def best_of(impls, rounds, warmup, on_round):
    """run_rounds() of timed impls (async callables); return {name: best
    seconds}."""
    res = await run_rounds([(name, timed(fn)) for name, fn in impls],
                           rounds, warmup, on_round)
    return {name: min(values) for name, values in res.items()}


def first_loop(ctx):
    """Loop-independent impls (synchronous peers) run on the first loop
    only."""
    return ctx["first"]


def ms(s):
    return f"{s * 1e3:.1f} ms" if s >= 0.0095 else f"{s * 1e3:.2f} ms"


# ------------------------------------------------------------------ peers


class Peers:
    """The peer libraries that import here; absent ones print "absent"."""

    def __init__(self):
        self.mods = {}
        for name in ("faiss", "simsimd", "numkong", "usearch"):
            try:
                if name == "usearch":
                    import usearch.index as mod
                else:
                    mod = __import__(name)
            except ImportError:
                continue
            self.mods[name] = mod

    def has(self, name):
        return name in self.mods

    def __getitem__(self, name):
        return self.mods[name]

    def line(self):
        names = ("faiss", "simsimd", "numkong", "usearch")
        return " | ".join(
            f"{n} {getattr(self.mods[n], '__version__', '?')}"
            if n in self.mods else f"{n} absent" for n in names)


def versus_peers(best, ours, peers, absent=()):
    """'peer t (r x)' for each peer impl, and the ratio to the best peer
    (peer time / offloop time, > 1: offloop is faster)."""
    parts = [f"{name} {ms(best[name])} ({best[name] / best[ours]:.2f}x)"
             for name in peers if name in best]
    parts += [f"{name} absent" for name in absent]
    present = [best[name] for name in peers if name in best]
    if not present:
        return None, " | ".join(parts) or "no peer installed"
    r = min(present) / best[ours]
    return r, " | ".join(parts) + f" | vs best peer {r:.2f}x"


# ------------------------------------------------------- memory bandwidth


def scale_in_place(h):
    """``h *= 1``: the access pattern of an in-place normalize."""
    import numpy as np

    np.multiply(h, np.float32(1.0), out=h)


def read_or(h):
    """A plain streaming read of h's bytes (numpy's fastest here)."""
    import numpy as np

    np.bitwise_or.reduce(h.reshape(-1).view(np.uint64))


def read_add(h):
    import numpy as np

    np.add.reduce(h.reshape(-1).view(np.int64))


def stream_reads():
    """The C streaming reads (src/kernels/bandwidth.c) this CPU runs, as
    functions of an array: plain, prefetching and non-temporal loads, AVX2
    and AVX-512.  Each part of an array is cut at 4 KiB boundaries by
    Bandwidth.runs, so the non-temporal loads get their alignment."""
    import numpy as np

    from offloop import _core

    probe_buf = np.zeros(1032, np.uint64).view(np.uint8)
    probe_buf = probe_buf[(-probe_buf.ctypes.data) % 64:][:8192]
    out = []
    for v, name in enumerate(_core._stream_read_names()):
        try:
            _core._stream_read(probe_buf, v)
        except ValueError:
            continue

        def fn(h, v=v):
            flat = h.reshape(-1).view(np.uint8)
            # The non-temporal loads need aligned addresses: a part that
            # starts off a 64-byte boundary (the head Bandwidth.runs cuts
            # before the first one) is read from that boundary on.
            flat = flat[(-flat.ctypes.data) % 64:]
            if flat.size:  # (an empty view keeps the unaligned address)
                _core._stream_read(flat, v)

        fn.__name__ = f"read_{name}"
        out.append(fn)
    return out


class Bandwidth:
    """Streaming over an array with 1 and `threads` Python threads (numpy
    and the C reads release the GIL): the memory bandwidth reference."""

    def __init__(self, threads):
        self.pools = {n: concurrent.futures.ThreadPoolExecutor(n)
                      for n in sorted({1, threads})}
        self.reads = stream_reads()

    def read_impls(self, x):
        """impls of every read variant over x: numpy's and the C ones."""
        out = []
        for fn in [read_or] + self.reads:
            out += self.impls(x, fn)
        return out

    def close(self):
        for ex in self.pools.values():
            ex.shutdown()

    def runs(self, x, fn):
        """(pool size, callable) pairs that stream x with fn."""
        import numpy as np

        flat = x.reshape(-1).view(np.uint8)
        for n, ex in self.pools.items():
            step = -(-flat.size // n + 4095) // 4096 * 4096
            base = (-flat.ctypes.data) % 64  # first 64-byte boundary
            parts = [flat[:base]] if base else []
            parts += [flat[i:i + step] for i in range(base, flat.size, step)]
            # Back to x's dtype: every cut is a multiple of 8 bytes.
            parts = [p.view(x.dtype) for p in parts if p.size >= 8]
            yield n, lambda ex=ex, parts=parts: list(ex.map(fn, parts))

    def impls(self, x, fn):
        """best_of() impls of fn over x, to run in the same rotated rounds as
        the kernel they are a reference for: the machine's bandwidth drifts
        by half within minutes here, so only a side-by-side figure is a
        fair denominator."""
        async def run(go):
            go()

        return [(f"bw_{fn.__name__}_x{n}", lambda go=go: run(go))
                for n, go in self.runs(x, fn)]

    def best(self, x, rounds, rec):
        """Best in-place read+write and read bandwidth (bytes/s) over x,
        for the header."""
        best_rw = best_r = 0.0
        for (n, scale), (_, r_or), (_, r_add), *c_reads in zip(
                self.runs(x, scale_in_place), self.runs(x, read_or),
                self.runs(x, read_add), *[self.runs(x, f) for f in self.reads]):
            scale()  # warm-up: pages, threads
            for rnd in range(rounds):
                for name, go, nbytes in (
                        [("scale", scale, 2 * x.nbytes),
                         ("read_or", r_or, x.nbytes),
                         ("read_add", r_add, x.nbytes)]
                        + [(f.__name__, go, x.nbytes) for f, (_, go)
                           in zip(self.reads, c_reads)]):
                    t0 = time.perf_counter()
                    go()
                    dt = time.perf_counter() - t0
                    record(rec, "-", "bandwidth", f"{name}_x{n}", rnd, dt,
                           nbytes)
                    if name == "scale":
                        best_rw = max(best_rw, nbytes / dt)
                    else:
                        best_r = max(best_r, nbytes / dt)
        return best_rw, best_r


def side_by_side(best, prefix, nbytes):
    """The best bandwidth (bytes/s) among the best_of() impls named
    prefix*."""
    return max(nbytes / t for name, t in best.items()
               if name.startswith(prefix))


# ------------------------------------------------------------------ cases


async def case_cosine(ctx):
    import numpy as np

    import offloop

    loopname, rec, n = ctx["loop"], ctx["rec"], ctx["cos_n"]
    rng = np.random.default_rng(0)
    a = rng.random(D, dtype=np.float32)
    b = rng.random(D, dtype=np.float32)
    cos = offloop.cosine_similarity
    norm = np.linalg.norm
    nn = max(1, n // 5)

    async def ours():
        for _ in range(n):
            await cos(a, b)

    async def numpy_sync():
        for _ in range(nn):
            a @ b / (norm(a) * norm(b))

    peers = ctx["peers"]
    impls = [("offloop", ours), ("numpy", numpy_sync)]
    per = {"offloop": n, "numpy": nn}
    ours_sync = offloop.blocking.cosine_similarity
    if first_loop(ctx):  # sync calls do not depend on the loop
        async def offloop_sync():
            for _ in range(n):
                ours_sync(a, b)
        impls.append(("offloop_sync", offloop_sync))
        per["offloop_sync"] = n
        if peers.has("simsimd"):
            sim = peers["simsimd"].cosine

            async def simsimd_sync():
                for _ in range(n):
                    sim(a, b)
            impls.append(("simsimd", simsimd_sync))
            per["simsimd"] = n
        if peers.has("numkong"):
            ang = peers["numkong"].angular

            async def numkong_sync():
                for _ in range(n):
                    ang(a, b)
            impls.append(("numkong", numkong_sync))
            per["numkong"] = n
    best = await best_of(
        impls, ctx["rounds"],
        ctx["warmup"],
        lambda name, rnd, dt: record(rec, loopname, "cosine_768", name,
                                     rnd, dt / per[name]))
    best = {k: v / per[k] for k, v in best.items()}
    if "offloop_sync" in best:
        pair = ("simsimd", "numkong")
        present = [best[p] for p in pair if p in best]
        r = min(present) / best["offloop_sync"] if present else None
        if r is not None:
            ctx["goals"].append(("pair cosine vs best peer",
                                 r >= GOAL_PAIR_PEER))
        print(f"cosine_similarity 768-d, sync (blocking twin):"
              f" {best['offloop_sync'] * 1e6:.3f} us | "
              + " | ".join(f"{p} {best[p] * 1e6:.3f} us"
                           f" ({best[p] / best['offloop_sync']:.2f}x)"
                           if p in best else f"{p} absent" for p in pair)
              + (f" | vs best peer {r:.2f}x (goal >={GOAL_PAIR_PEER:g}x"
                 f" {verdict(r >= GOAL_PAIR_PEER)})" if r is not None
                 else ""),
              flush=True)
    best = {k: v * per[k] for k, v in best.items()}
    us = best["offloop"] / n * 1e6
    np_us = best["numpy"] / nn * 1e6
    ratio = np_us / us
    ok_us, ok_ratio = us <= GOAL_COSINE_US, ratio >= GOAL_COSINE_RATIO
    ctx["goals"] += [(f"[{loopname}] cosine <= {GOAL_COSINE_US} us", ok_us),
                     (f"[{loopname}] cosine vs numpy", ok_ratio)]
    print(f"[{loopname}] cosine_similarity 768-d, awaited: {us:.3f} us/call"
          f" (goal <={GOAL_COSINE_US:g} us {verdict(ok_us)})"
          f" | numpy a@b/(norm(a)*norm(b)) {np_us:.3f} us"
          f" ({ratio:.1f}x faster, goal >={GOAL_COSINE_RATIO:g}x"
          f" {verdict(ok_ratio)})", flush=True)


def numpy_normalize_norm(x):
    import numpy as np

    x /= np.linalg.norm(x, axis=1, keepdims=True)


def numpy_normalize_einsum(x, tmp):
    import numpy as np

    np.einsum("ij,ij->i", x, x, out=tmp)
    np.sqrt(tmp, out=tmp)
    np.divide(x, tmp[:, None], out=x)


async def case_normalize(ctx):
    import numpy as np

    import offloop

    rec, n = ctx["rec"], ctx["norm_n"]
    x = ctx["data"]["norm"][:n]
    tmp = np.empty(n, np.float32)

    async def ours():
        await offloop.batch_normalize(x, out=x)

    async def np_norm():
        numpy_normalize_norm(x)

    async def np_einsum():
        numpy_normalize_einsum(x, tmp)

    peer_impls = []
    if ctx["peers"].has("faiss"):
        faiss = ctx["peers"]["faiss"]

        async def faiss_norm():
            faiss.normalize_L2(x)
        peer_impls.append(("faiss", faiss_norm))
    best = await best_of(
        [("offloop", ours), ("numpy_norm", np_norm),
         ("numpy_einsum", np_einsum)] + peer_impls
        + ctx["bandwidth"].impls(x, scale_in_place),
        ctx["rounds"], ctx["warmup"],
        lambda name, rnd, dt: record(rec, ctx["loop"], f"normalize_{n}",
                                     name, rnd, dt, 2 * x.nbytes))
    bw_rw = side_by_side(best, "bw_", 2 * x.nbytes)
    np_best = min(best["numpy_norm"], best["numpy_einsum"])
    np_name = ("norm" if best["numpy_norm"] <= best["numpy_einsum"]
               else "einsum")
    ratio = np_best / best["offloop"]
    eff = 2 * x.nbytes / best["offloop"] / bw_rw
    ok_r, ok_bw = ratio >= GOAL_NORMALIZE_RATIO, eff >= GOAL_NORMALIZE_BW
    ctx["goals"] += [("batch_normalize vs numpy", ok_r),
                     ("batch_normalize bandwidth", ok_bw)]
    print(f"batch_normalize {n:,} x {D} in place: {ms(best['offloop'])}"
          f" ({2 * x.nbytes / best['offloop'] / 1e9:.1f} GB/s r+w)"
          f" | numpy x/=norm {ms(best['numpy_norm'])}, einsum"
          f" {ms(best['numpy_einsum'])}; best ({np_name})"
          f" ({ratio:.1f}x faster, goal >={GOAL_NORMALIZE_RATIO:g}x"
          f" {verdict(ok_r)})"
          f" | {eff:.0%} of in-place r+w bandwidth"
          f" ({bw_rw / 1e9:.1f} GB/s in the same rounds)"
          f" (goal >={GOAL_NORMALIZE_BW:.0%} {verdict(ok_bw)})",
          flush=True)
    r, line = versus_peers(best, "offloop", ("faiss",),
                           () if ctx["peers"].has("faiss") else ("faiss",))
    if r is not None:
        ctx["goals"].append(("batch_normalize vs faiss",
                             r >= GOAL_NORMALIZE_PEER))
        line += (f" (goal >={GOAL_NORMALIZE_PEER:g}x"
                 f" {verdict(r >= GOAL_NORMALIZE_PEER)})")
    print(f"  peers: faiss normalize_L2 | {line}", flush=True)


async def case_normalize_small(ctx):
    import numpy as np

    import offloop

    x = ctx["data"]["norm"][:5000].copy()
    tmp = np.empty(5000, np.float32)

    async def ours():
        await offloop.batch_normalize(x, out=x)

    async def np_best():
        numpy_normalize_einsum(x, tmp)

    async def np_norm():
        numpy_normalize_norm(x)

    best = await best_of(
        [("offloop", ours), ("numpy_einsum", np_best),
         ("numpy_norm", np_norm)], ctx["rounds"], ctx["warmup"],
        lambda name, rnd, dt: record(ctx["rec"], ctx["loop"],
                                     "normalize_5000", name, rnd, dt,
                                     2 * x.nbytes))
    npb = min(best["numpy_einsum"], best["numpy_norm"])
    print(f"batch_normalize 5,000 x {D}: {ms(best['offloop'])}"
          f" | numpy best {ms(npb)} ({npb / best['offloop']:.1f}x)"
          f" | seed article: Python+NumPy {SEED_PYTHON_NUMPY_S} s"
          f" ({SEED_PYTHON_NUMPY_S / best['offloop']:,.0f}x ours),"
          f" Rust+rayon {SEED_RUST_RAYON_S} s"
          f" ({SEED_RUST_RAYON_S / best['offloop']:,.0f}x ours)",
          flush=True)


def numpy_topk(scores, k):
    """Indices of the k best scores of each row, best first."""
    import numpy as np

    if scores.ndim == 1:
        idx = np.argpartition(-scores, k - 1)[:k]
        return idx[np.argsort(-scores[idx], kind="stable")]
    idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part = np.take_along_axis(scores, idx, 1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1)


def check_agree(ours_idx, np_idx, label):
    """Top-1 of every query agrees with numpy (sanity, not a tolerance
    test: tests/test_vectors.py does that)."""
    import numpy as np

    a = np.atleast_2d(ours_idx)[:, 0]
    b = np.atleast_2d(np_idx)[:, 0]
    if not np.array_equal(a, b):
        print(f"  WARNING {label}: top-1 differs from numpy in"
              f" {int((a != b).sum())} of {len(a)} queries", flush=True)


async def case_topk_one(ctx):
    import numpy as np

    import offloop

    rec = ctx["rec"]
    m_unit, m_raw = ctx["data"]["m_unit"], ctx["data"]["m_raw"]
    q = ctx["data"]["q"][0]
    qn = q / np.linalg.norm(q)
    res = {}

    async def ours_unit():
        res["ours_unit"] = (await offloop.top_k(q, m_unit, K,
                                                normalized=True))[1]

    async def ours_raw():
        res["ours_raw"] = (await offloop.top_k(q, m_raw, K))[1]

    async def np_unit():
        s = m_unit @ qn
        res["np_unit"] = numpy_topk(s, K)

    async def np_raw_norm():
        s = (m_raw @ q) / (np.linalg.norm(m_raw, axis=1) * np.linalg.norm(q))
        res["np_raw"] = numpy_topk(s, K)

    async def np_raw_einsum():
        s = (m_raw @ q) / (np.sqrt(np.einsum("ij,ij->i", m_raw, m_raw))
                           * np.linalg.norm(q))
        res["np_raw"] = numpy_topk(s, K)

    nbytes = m_unit.nbytes
    peer_impls = topk_peer_impls(ctx["peers"], m_unit, qn, res)
    best = await best_of(
        [("offloop_unit", ours_unit), ("numpy_unit", np_unit),
         ("offloop_raw", ours_raw), ("numpy_raw_norm", np_raw_norm),
         ("numpy_raw_einsum", np_raw_einsum)] + peer_impls
        + ctx["bandwidth"].read_impls(m_unit),
        ctx["rounds"], ctx["warmup"],
        lambda name, rnd, dt: record(rec, ctx["loop"], "topk_1q", name, rnd,
                                     dt, nbytes))
    bw_r = side_by_side(best, "bw_", nbytes)
    check_agree(res["ours_unit"], res["np_unit"], "top_k unit")
    check_agree(res["ours_raw"], res["np_raw"], "top_k raw")
    n = m_unit.shape[0]
    r_unit = best["numpy_unit"] / best["offloop_unit"]
    eff = nbytes / best["offloop_unit"] / bw_r
    # The goal is against the idiomatic numpy (linalg.norm); einsum's
    # norms, numpy's fastest, are printed beside it.
    np_raw = best["numpy_raw_norm"]
    r_raw = np_raw / best["offloop_raw"]
    r_raw_einsum = best["numpy_raw_einsum"] / best["offloop_raw"]
    ok_u = r_unit >= GOAL_TOPK1_UNIT_RATIO
    ok_bw = eff >= GOAL_TOPK1_UNIT_BW
    ok_raw = r_raw >= GOAL_TOPK1_RAW_RATIO
    ctx["goals"] += [("top_k 1q unit vs numpy", ok_u),
                     ("top_k 1q unit bandwidth", ok_bw),
                     ("top_k 1q raw vs numpy", ok_raw)]
    print(f"top_k k={K}, 1 query x {n:,} x {D}, unit rows"
          f" (normalized=True): {ms(best['offloop_unit'])}"
          f" ({nbytes / best['offloop_unit'] / 1e9:.1f} GB/s)"
          f" | numpy matmul+argpartition {ms(best['numpy_unit'])}"
          f" ({r_unit:.2f}x faster, goal >={GOAL_TOPK1_UNIT_RATIO:g}x"
          f" {verdict(ok_u)}) | {eff:.0%} of read bandwidth"
          f" ({bw_r / 1e9:.1f} GB/s in the same rounds)"
          f" (goal >={GOAL_TOPK1_UNIT_BW:.0%} {verdict(ok_bw)})", flush=True)
    print(f"top_k k={K}, 1 query x {n:,} x {D}, raw rows:"
          f" {ms(best['offloop_raw'])}"
          f" ({nbytes / best['offloop_raw'] / 1e9:.1f} GB/s)"
          f" | numpy linalg.norm+matmul+argpartition {ms(np_raw)}"
          f" ({r_raw:.1f}x faster, goal >={GOAL_TOPK1_RAW_RATIO:g}x"
          f" {verdict(ok_raw)}) | with einsum norms (numpy's fastest)"
          f" {ms(best['numpy_raw_einsum'])} ({r_raw_einsum:.1f}x)",
          flush=True)
    _, line = versus_peers(best, "offloop_unit", ("faiss", "usearch"),
                           [p for p in ("faiss", "usearch")
                            if not ctx["peers"].has(p)])
    print(f"  peers, unit rows: faiss knn (IP), usearch exact (IP) | {line}",
          flush=True)
    for p in ("faiss", "usearch"):
        if p in res:
            check_agree(res["ours_unit"], res[p], f"top_k vs {p}")


def topk_peer_impls(peers, m_unit, qn, res):
    """faiss knn and usearch exact search over unit rows (inner product =
    cosine), the queries pre-normalized."""
    import numpy as np

    out = []
    q2 = np.ascontiguousarray(np.atleast_2d(qn), dtype=np.float32)
    if peers.has("faiss"):
        faiss = peers["faiss"]

        async def faiss_knn():
            res["faiss"] = faiss.knn(q2, m_unit, K,
                                     metric=faiss.METRIC_INNER_PRODUCT)[1]
        out.append(("faiss", faiss_knn))
    if peers.has("usearch"):
        us = peers["usearch"]

        async def usearch_exact():
            r = us.search(m_unit, q2 if len(q2) > 1 else q2[0], K,
                          us.MetricKind.IP, exact=True, threads=0)
            res["usearch"] = r.keys
        out.append(("usearch", usearch_exact))
    return out


async def case_scores(ctx):
    """cosine_similarities: one query against every row, all the scores."""
    import numpy as np

    import offloop

    m_raw = ctx["data"]["m_raw"]
    q = ctx["data"]["q"][0]
    peers = ctx["peers"]
    res = {}

    async def ours():
        res["ours"] = await offloop.cosine_similarities(q, m_raw)

    async def numpy_raw():
        res["np"] = (m_raw @ q) / (np.sqrt(np.einsum("ij,ij->i", m_raw, m_raw))
                                   * np.linalg.norm(q))

    impls = [("offloop", ours), ("numpy", numpy_raw)]
    if peers.has("simsimd"):
        sim = peers["simsimd"]

        async def simsimd_cdist():
            sim.cdist(q[None], m_raw, metric="cosine", threads=0)
        impls.append(("simsimd", simsimd_cdist))
    if peers.has("numkong"):
        nk = peers["numkong"]

        async def numkong_cdist():
            nk.cdist(q[None], m_raw, metric="angular", threads=0)
        impls.append(("numkong", numkong_cdist))
    nbytes = m_raw.nbytes
    try:
        best = await best_of(
            impls + ctx["bandwidth"].read_impls(m_raw), ctx["rounds"],
            ctx["warmup"],
            lambda name, rnd, dt: record(ctx["rec"], ctx["loop"],
                                         "scores_1q", name, rnd, dt, nbytes))
    except TypeError:  # a peer's cdist signature differs: without peers
        best = await best_of(
            impls[:2] + ctx["bandwidth"].read_impls(m_raw), ctx["rounds"],
            ctx["warmup"],
            lambda name, rnd, dt: record(ctx["rec"], ctx["loop"],
                                         "scores_1q", name, rnd, dt, nbytes))
    bw_r = side_by_side(best, "bw_", nbytes)
    r, line = versus_peers(best, "offloop", ("simsimd", "numkong"),
                           [p for p in ("simsimd", "numkong")
                            if not peers.has(p)])
    eff = nbytes / best["offloop"] / bw_r
    ctx["goals"].append(("scores bandwidth", eff >= GOAL_SCAN_BW))
    if r is not None:
        ctx["goals"].append(("scores vs best peer", r >= GOAL_SCORES_PEER))
        line += (f" (goal >={GOAL_SCORES_PEER:g}x"
                 f" {verdict(r >= GOAL_SCORES_PEER)})")
    print(f"cosine_similarities 1 query x {m_raw.shape[0]:,} x {D}, raw"
          f" rows: {ms(best['offloop'])}"
          f" ({nbytes / best['offloop'] / 1e9:.1f} GB/s,"
          f" {eff:.0%} of read bandwidth {bw_r / 1e9:.1f} GB/s, goal"
          f" >={GOAL_SCAN_BW:.0%} {verdict(eff >= GOAL_SCAN_BW)})"
          f" | numpy {ms(best['numpy'])}"
          f" ({best['numpy'] / best['offloop']:.2f}x) | {line}", flush=True)


async def case_topk_many(ctx):
    import numpy as np

    import offloop

    m_unit = ctx["data"]["m_unit"]
    q = ctx["data"]["q"][:ctx["nq"]]
    res = {}

    async def ours():
        res["ours"] = (await offloop.top_k(q, m_unit, K, normalized=True))[1]

    async def numpy_mm():
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        res["np"] = numpy_topk(qn @ m_unit.T, K)

    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    best = await best_of(
        [("offloop", ours), ("numpy", numpy_mm)]
        + topk_peer_impls(ctx["peers"], m_unit, qn, res), ctx["rounds"],
        ctx["warmup"],
        lambda name, rnd, dt: record(ctx["rec"], ctx["loop"], "topk_many",
                                     name, rnd, dt, m_unit.nbytes))
    check_agree(res["ours"], res["np"], "top_k many")
    r = best["numpy"] / best["offloop"]
    ok = r >= GOAL_TOPK64_RATIO
    ctx["goals"].append((f"top_k {len(q)}q vs numpy", ok))
    gflops = 2 * len(q) * m_unit.size / best["offloop"] / 1e9
    print(f"top_k k={K}, {len(q)} queries x {m_unit.shape[0]:,} x {D},"
          f" unit rows: {ms(best['offloop'])} ({gflops:.0f} GFLOP/s)"
          f" | numpy matmul+argpartition {ms(best['numpy'])}"
          f" ({r:.2f}x faster, goal >={GOAL_TOPK64_RATIO:g}x {verdict(ok)})",
          flush=True)
    _, line = versus_peers(best, "offloop", ("faiss", "usearch"),
                           [p for p in ("faiss", "usearch")
                            if not ctx["peers"].has(p)])
    print(f"  peers, {len(q)} queries: faiss knn, usearch exact | {line}",
          flush=True)


# Goals for quantized scans (issue: "Goals for quantized scans").
GOAL_BF16_SPEEDUP = 1.8   # float32 time / bfloat16 time
GOAL_INT8_SPEEDUP = 3.0
GOAL_RECALL_BF16 = 0.99   # recall@10 against exact float32, no re-rank
GOAL_RECALL_INT8 = 0.95
GOAL_RECALL_RERANK = 1.0


def recall_at_k(got, exact):
    import numpy as np

    got, exact = np.atleast_2d(got), np.atleast_2d(exact)
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / len(b)
                          for a, b in zip(got, exact)]))


def quant_setup(ctx):
    """The quantized copies of m_unit, made once: offloop's (timed), faiss
    SQ8's index, usearch's int8 and bfloat16 rows."""
    import numpy as np

    import offloop

    if "quant" in ctx["data"]:
        return ctx["data"]["quant"]
    m_unit = ctx["data"]["m_unit"]
    peers = ctx["peers"]
    qd = {}
    for dt in ("bfloat16", "int8"):
        t0 = time.perf_counter()
        qd[dt] = offloop.blocking.quantize(m_unit, dt)
        qd[f"{dt}_s"] = time.perf_counter() - t0
    if peers.has("faiss"):
        faiss = peers["faiss"]
        sq = faiss.IndexScalarQuantizer(D, faiss.ScalarQuantizer.QT_8bit,
                                        faiss.METRIC_INNER_PRODUCT)
        t0 = time.perf_counter()
        sq.train(m_unit)
        sq.add(m_unit)
        qd["faiss_s"] = time.perf_counter() - t0
        qd["faiss"] = sq
    # usearch scans codes of its own dtype, queries included: int8 rows
    # scaled to 127 (cosine ignores the scale), bfloat16 as uint16 bits.
    qd["us_i8"] = qd["int8"].codes
    qd["us_bf16"] = qd["bfloat16"].codes
    ctx["data"]["quant"] = qd
    return qd


def to_int8(q):
    import numpy as np

    q = np.atleast_2d(q)
    return np.round(q * (127 / np.abs(q).max(axis=1, keepdims=True))) \
        .astype(np.int8)


def to_bf16_bits(q):
    import numpy as np

    u = np.ascontiguousarray(q, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


async def case_quant(ctx):
    """top_k over bfloat16 and int8 rows against float32 and the peers'
    quantized scans, one query and nq queries, with recall@10."""
    import numpy as np

    import offloop

    qd = quant_setup(ctx)
    m_unit = ctx["data"]["m_unit"]
    n = m_unit.shape[0]
    peers = ctx["peers"]
    print(f"quantize {n:,} x {D} on the pool: bfloat16"
          f" {ms(qd['bfloat16_s'])}, int8 {ms(qd['int8_s'])}"
          + (f" | faiss SQ8 train+add {ms(qd['faiss_s'])}"
             if "faiss" in qd else " | faiss absent"), flush=True)
    for nq in (1, ctx["nq"]):
        q = ctx["data"]["q"][:nq]
        qq = q[0] if nq == 1 else q
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        res = {}

        def ours(name, m, **kw):
            async def go():
                res[name] = (await offloop.top_k(qq, m, K, **kw))[1]
            return (name, go)

        impls = [ours("float32", m_unit, normalized=True),
                 ours("bfloat16", qd["bfloat16"]),
                 ours("int8", qd["int8"]),
                 ours("bfloat16_rerank", qd["bfloat16"], rerank=m_unit),
                 ours("int8_rerank", qd["int8"], rerank=m_unit)]
        if "faiss" in qd:
            async def faiss_sq8():
                res["faiss_sq8"] = qd["faiss"].search(qn, K)[1]
            impls.append(("faiss_sq8", faiss_sq8))
        if peers.has("usearch"):
            us = peers["usearch"]
            qi8 = to_int8(q)
            qbf = to_bf16_bits(qn)

            async def usearch_i8():
                r = us.search(qd["us_i8"], qi8 if nq > 1 else qi8[0], K,
                              us.MetricKind.Cos, exact=True, threads=0)
                res["usearch_i8"] = r.keys
            async def usearch_bf16():
                r = us.search(qd["us_bf16"], qbf if nq > 1 else qbf[0], K,
                              us.MetricKind.IP, exact=True, threads=0,
                              dtype=us.ScalarKind.BF16)
                res["usearch_bf16"] = r.keys
            impls += [("usearch_i8", usearch_i8),
                      ("usearch_bf16", usearch_bf16)]
        rounds = ctx["rounds"] if nq == 1 else max(2, min(ctx["rounds"], 5))
        best = await best_of(
            impls, rounds, ctx["warmup"],
            lambda name, rnd, dt, nq=nq: record(
                ctx["rec"], ctx["loop"], f"quant_topk_{nq}q", name, rnd, dt))
        exact = res["float32"]
        rec_ = {name: recall_at_k(res[name], exact) for name in res}
        f32 = best["float32"]
        sp_bf, sp_i8 = f32 / best["bfloat16"], f32 / best["int8"]
        goals = [
            (f"quant {nq}q bfloat16 >= {GOAL_BF16_SPEEDUP}x float32",
             sp_bf >= GOAL_BF16_SPEEDUP),
            (f"quant {nq}q int8 >= {GOAL_INT8_SPEEDUP}x float32",
             sp_i8 >= GOAL_INT8_SPEEDUP),
            (f"quant {nq}q bfloat16 recall", rec_["bfloat16"]
             >= GOAL_RECALL_BF16),
            (f"quant {nq}q int8 recall", rec_["int8"] >= GOAL_RECALL_INT8),
            (f"quant {nq}q re-ranked recall",
             min(rec_["bfloat16_rerank"], rec_["int8_rerank"])
             >= GOAL_RECALL_RERANK)]
        # Recall over one query moves in steps of 1/K: the recall goals
        # are judged on the many-query run (the same rows).
        ctx["goals"] += goals if nq > 1 else goals[:2]
        print(f"top_k k={K}, {nq} quer{'y' if nq == 1 else 'ies'} x {n:,} x"
              f" {D} (time, vs offloop float32, recall@{K}"
              f"{' of this one query' if nq == 1 else ''}):", flush=True)
        for name, _ in impls:
            print(f"  {name:16s} {ms(best[name]):>9s}"
                  f"  {f32 / best[name]:5.2f}x  recall {rec_[name]:.3f}",
                  flush=True)
        for name in ("faiss_sq8", "usearch_i8", "usearch_bf16"):
            if name not in best:
                print(f"  {name:16s} absent", flush=True)
        peer_names = [p for p in ("faiss_sq8", "usearch_i8", "usearch_bf16")
                      if p in best]
        if peer_names:
            bp = min(best[p] for p in peer_names)
            print(f"  vs best quantized peer: int8 {bp / best['int8']:.2f}x,"
                  f" bfloat16 {bp / best['bfloat16']:.2f}x, int8+rerank"
                  f" {bp / best['int8_rerank']:.2f}x", flush=True)
        recall = (" (recall goals: on the many-query run)" if nq == 1 else
                  f", recall bfloat16 {rec_['bfloat16']:.3f}"
                  f" ({verdict(goals[2][1])}), int8 {rec_['int8']:.3f}"
                  f" ({verdict(goals[3][1])}), re-ranked"
                  f" {rec_['bfloat16_rerank']:.3f}/{rec_['int8_rerank']:.3f}"
                  f" ({verdict(goals[4][1])})")
        print(f"  goals: bfloat16 {sp_bf:.2f}x (>= {GOAL_BF16_SPEEDUP:g}x"
              f" {verdict(goals[0][1])}), int8 {sp_i8:.2f}x"
              f" (>= {GOAL_INT8_SPEEDUP:g}x {verdict(goals[1][1])})" + recall,
              flush=True)
    per_m = 1e6 / n
    line = (f"float32 {m_unit.nbytes * per_m / 1e9:.2f} GB | bfloat16"
            f" {qd['bfloat16'].nbytes * per_m / 1e9:.2f} GB | int8"
            f" {qd['int8'].nbytes * per_m / 1e9:.2f} GB")
    if "faiss" in qd:
        line += (f" | faiss SQ8 codes"
                 f" {qd['faiss'].sa_code_size() * 1e6 / 1e9:.2f} GB")
    print(f"memory per million {D}-d vectors: {line}", flush=True)


async def case_lag(ctx):
    """Idle and loaded blocks alternate, so drift hits both."""
    import offloop

    loopname, rec = ctx["loop"], ctx["rec"]
    per_block = max(1, ctx["samples"] // ctx["blocks"])
    x = ctx["data"]["norm"][:ctx["norm_n"]]
    threads = offloop.stats()["threads"]

    async def idle():
        return await probe(per_block), None, None, None

    async def loaded():
        # Two in flight: the next job is queued while one runs, so the
        # workers never wait for the loop between jobs.
        feeder = Feeder(lambda: offloop.batch_normalize(x, out=x), 2)
        return await loaded_probe(feeder, per_block)

    # The loaded phase's completion rate, for the bare-wakeups phase: one
    # job at a time on all workers, back to back (the fastest of three,
    # as the first pays for faulting pages in).
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        await offloop.batch_normalize(x, out=x)
        times.append(time.perf_counter() - t0)
    rate = 1.0 / min(times)

    async def bare_wakeups():
        return await probe_bare_wakeups(rate, per_block), None, None, None

    phases = [("idle", idle), ("normalize", loaded),
              ("bare_wakeups", bare_wakeups)]
    await probe(min(200, per_block))  # warm-up
    lats = {name: [] for name, _ in phases}
    cores, loaded_jobs, slowest = [], [], [0.0]

    def on_block(name, b, value):
        lat, c, j, sub = value
        lats[name].extend(lat)
        record(rec, loopname, "sleep_overshoot", name, b,
               percentile(lat, 99), note=f"p99 of {len(lat)}")
        if c is not None:
            cores.append(c)
            loaded_jobs.append(j)
            slowest[0] = max(slowest[0], sub)

    await run_rounds(phases, ctx["blocks"], 0, on_block)
    jobs, slowest = sum(loaded_jobs), slowest[0]
    res = {}
    for name, v in lats.items():
        res[name] = (percentile(v, 50) * 1e3, percentile(v, 99) * 1e3,
                     max(v) * 1e3)
    extra = res["normalize"][1] - res["idle"][1]
    ok = extra <= GOAL_P99_EXTRA_MS
    ctx["goals"].append((f"[{loopname}] sleep p99 under normalize", ok))
    i50, i99, imax = res["idle"]
    l50, l99, lmax = res["normalize"]
    w50, w99, wmax = res["bare_wakeups"]
    print(f"[{loopname}] sleep(1ms) overshoot, {ctx['blocks']}x{per_block}"
          f" samples: idle p50 {i50:.3f} p99 {i99:.3f} max {imax:.1f} ms"
          f" | {threads} workers on {ctx['norm_n']:,} x {D} batch_normalize"
          f" ({jobs} jobs, {sum(cores) / max(len(cores), 1):.2f} CPUs busy)"
          f" p50 {l50:.3f} p99 {l99:.3f} max {lmax:.1f} ms"
          f" ({extra:+.3f} ms, goal <=+{GOAL_P99_EXTRA_MS} ms {verdict(ok)};"
          f" slowest submit {slowest * 1e6:.0f} us)"
          f" | bare wakeups, {rate:.0f}/s at random, no CPU work:"
          f" p50 {w50:.3f} p99 {w99:.3f} max {wmax:.1f} ms"
          f" ({w99 - i99:+.3f})", flush=True)


# ------------------------------------------------------------------- main


def make_data(args):
    import numpy as np

    rng = np.random.default_rng(42)
    half = np.float32(0.5)
    m_raw = rng.random((args.rows, D), dtype=np.float32) - half
    m_raw *= rng.random((args.rows, 1), dtype=np.float32) * 4 + half
    m_unit = m_raw / np.linalg.norm(m_raw, axis=1, keepdims=True)
    norm = rng.random((args.norm_n, D), dtype=np.float32) - half
    q = rng.random((max(args.nq, 1), D), dtype=np.float32) - half
    return {"m_raw": m_raw, "m_unit": m_unit, "norm": norm, "q": q}


CASES = {  # name: (function, runs on every loop)
    "normalize": (lambda ctx: case_normalize(ctx), False),
    "normalize_small": (lambda ctx: case_normalize_small(ctx), False),
    "topk1": (lambda ctx: case_topk_one(ctx), False),
    "topk_many": (lambda ctx: case_topk_many(ctx), False),
    "scores": (lambda ctx: case_scores(ctx), False),
    "quant": (lambda ctx: case_quant(ctx), False),
    "cosine": (lambda ctx: case_cosine(ctx), True),
    "lag": (lambda ctx: case_lag(ctx), True),
}


async def bench_loop(ctx, first):
    ctx["first"] = first
    for name in ctx["cases"]:
        fn, every_loop = CASES[name]
        if first or every_loop:  # loop-independent cases run once
            await fn(ctx)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9,
                    help="measured rounds per case (default 9)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="unrecorded warm-up rounds (default 1)")
    ap.add_argument("--rows", type=int, default=200_000,
                    help="rows of the top_k matrix (default 200000)")
    ap.add_argument("--norm-n", type=int, default=100_000,
                    help="rows of the batch_normalize matrix "
                    "(default 100000)")
    ap.add_argument("--nq", type=int, default=64,
                    help="queries of the many-query top_k (default 64)")
    ap.add_argument("--cos-n", type=int, default=100_000,
                    help="awaited cosine calls per round (default 100000)")
    ap.add_argument("--samples", type=int, default=4_000,
                    help="sleep probes per phase (default 4000)")
    ap.add_argument("--blocks", type=int, default=4,
                    help="idle/loaded alternations (default 4)")
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated subset of " + ",".join(CASES))
    ap.add_argument("--worker-priority", default=None,
                    help="OFFLOOP_WORKER_PRIORITY for offloop's workers: "
                         "unset (default), idle or a nice increment")
    ap.add_argument("--loops", default="asyncio,uvloop",
                    help="comma-separated: asyncio,uvloop")
    ap.add_argument("--threads", type=int, default=None,
                    help="offloop.configure(threads=N)")
    ap.add_argument("--isa", default=None,
                    help="force the kernels' ISA: scalar, avx2, avx512")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 rounds, smaller sizes (< 30 s)")
    ap.add_argument("--csv", default=None,
                    help="CSV path (default benchmarks/results/"
                    "bench_vectors-<ts>.csv)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 2)
        args.samples = min(args.samples, 400)
        args.blocks = min(args.blocks, 2)
        args.cos_n = min(args.cos_n, 20_000)

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            ap.error(f"unknown case {c!r}")
    if args.worker_priority is not None:
        os.environ["OFFLOOP_WORKER_PRIORITY"] = args.worker_priority

    import numpy as np

    import offloop
    from offloop import _core

    if args.threads is not None:
        offloop.configure(threads=args.threads)
    if args.isa:
        _core._set_isa(args.isa)
    factories = loop_factories(args.loops, ap.error)

    ts = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    commit = git_commit()
    threads = offloop.stats()["threads"]
    print(f"# bench_vectors {ts}", flush=True)
    print(f"# machine: {machine()}")
    print(f"# python {platform.python_version()} | offloop"
          f" {offloop.__version__} @ {commit} | numpy {np.__version__}")
    print(f"# numpy BLAS: {blas_line()}")
    print(f"# offloop: threads={threads} isa={_core._isa()}"
          f" worker_priority="
          f"{os.environ.get('OFFLOOP_WORKER_PRIORITY', 'default (normal policy, long slice)')}"
          f" | loops {','.join(factories)} | rounds={args.rounds}"
          f" (+{args.warmup} warm-up), best round reported", flush=True)

    t_start, steal_start = time.perf_counter(), steal_ticks()
    data = make_data(args)
    rec = Recorder("bench_vectors", RECORD_FIELDS, ts, commit,
                   isa=_core._isa())
    bandwidth = Bandwidth(threads)
    peers = Peers()
    print(f"# peers: {peers.line()}", flush=True)
    bw_rw, bw_r = bandwidth.best(data["m_raw"], max(2, args.rounds), rec)
    print(f"# memory bandwidth at start (best of numpy and the C streaming"
          f" reads {','.join(f.__name__[5:] for f in bandwidth.reads)},"
          f" 1 and {threads}"
          f" threads, {data['m_raw'].nbytes / 1e6:.0f} MB): in-place"
          f" read+write {bw_rw / 1e9:.1f} GB/s, read {bw_r / 1e9:.1f} GB/s;"
          f" the goals divide by the same reference timed in the kernel's"
          f" own rounds", flush=True)

    goals = []
    for i, (name, factory) in enumerate(factories.items()):
        ctx = {"loop": name, "rec": rec, "goals": goals, "data": data,
               "rounds": args.rounds, "warmup": args.warmup,
               "norm_n": args.norm_n, "nq": args.nq, "cos_n": args.cos_n,
               "samples": args.samples, "blocks": args.blocks,
               "bandwidth": bandwidth, "cases": cases, "peers": peers}
        loop = factory()
        try:
            loop.run_until_complete(bench_loop(ctx, i == 0))
        finally:
            loop.close()
    bandwidth.close()

    path = rec.write(args.csv)
    passed = sum(ok for _, ok in goals)
    print(f"# goals: {passed}/{len(goals)} PASS"
          + "".join(f" | MISS {g}" for g, ok in goals if not ok))
    print(f"# {time.perf_counter() - t_start:.0f} s, host steal "
          f"{steal_pct(steal_start, steal_ticks()):.0f}%; rounds in {path}")


if __name__ == "__main__":
    main()
