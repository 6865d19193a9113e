"""The driver: fans the manifest's shards out to the Celery workers as one
group, then merges what comes back.

    python celery_driver.py normalize MANIFEST OUT_DIR [--timeout 3600]
    python celery_driver.py search MANIFEST [--queries 100] [--k 10]
                                   [--batch 100] [--check]

normalize writes OUT_DIR/manifest.json for the normalized shards once
every shard is done (and checked to be there); search runs seeded random
queries (Q per task, one task per shard and batch) and, with --check,
compares the merged answer with offloop.blocking.top_k over the
concatenated shards in this process.  Both show progress on a terminal
(shards done of total, rows or queries per second, time left) and end
with a one-line summary.  The workers and Redis: see celery_app.py.
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Any, SupportsIndex, TypedDict, cast

import numpy as np
import numpy.typing as npt
from celery import group
from celery.result import GroupResult
from tqdm import tqdm

import offloop.blocking

import shards as sh
from celery_app import normalize_shard, search_shard

#: How long a group's get() waits on Redis for one message before it looks
#: at the group again.  Celery's default, 0.5 s, was most of a 4-shard
#: search's latency here (0.53 s against 0.04 s with 5 ms); the wait
#: blocks on the socket, it does not spin.
POLL = 0.005


class _Route(TypedDict, total=False):
    queue: str


def _options(queue: str | None) -> _Route:
    return {"queue": queue} if queue else {}


def _send(tasks: group, queue: str | None) -> GroupResult:
    """tasks.apply_async() to queue (None: the default one).  Celery
    returns a GroupResult; celery-types declares an AsyncResult, which
    has neither .results nor .join(), hence the cast."""
    return cast(GroupResult, tasks.apply_async(**_options(queue)))


def normalize_all(manifest_path: sh.StrPath, out_dir: sh.StrPath,
                  timeout: float = 3600, progress: bool | None = None,
                  queue: str | None = None
                  ) -> tuple[sh.Manifest, list[dict[str, Any]]]:
    """Normalize every shard of the manifest into out_dir, one task per
    shard; return (the new Manifest, the tasks' results in shard order).
    queue: the Celery queue to send to (workers started with -Q), else
    the default one.

    The manifest and its shards are checked before anything is queued
    (ManifestError).  Raises the first task's error, or TimeoutError.
    """
    m = sh.load_manifest(manifest_path)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    outs = [str(out_dir / Path(s.path).name) for s in m.shards]
    job = _send(group(normalize_shard.s(s.path, o)
                      for s, o in zip(m.shards, outs)), queue)
    rows_of: dict[str, int] = {}
    with tqdm(total=m.rows, unit="rows", unit_scale=True, desc="normalize",
              disable=None if progress is None else not progress) as bar:
        for child, s in zip(job.results or [], m.shards):
            rows_of[child.id] = s.rows
        done = 0

        def on_result(task_id: str, value: object) -> None:
            nonlocal done
            done += 1
            bar.update(rows_of.get(task_id, 0))
            bar.set_postfix_str(f"{done}/{len(m.shards)} shards")

        try:
            job.join(timeout=timeout, callback=on_result, propagate=True,
                     interval=POLL)
        except BaseException:
            job.revoke()
            raise
    # join() with a callback reports in completion order and returns
    # nothing; get() gives the (now ready) results in shard order.
    results = job.get(timeout=timeout, interval=POLL)
    for s, o in zip(m.shards, outs):
        sh.check_shard_header(o, s.rows, m.dim)
    new = sh.Manifest(
        str(out_dir / "manifest.json"), m.dim, m.rows, True,
        tuple(sh.ShardInfo(o, s.rows, s.offset)
              for s, o in zip(m.shards, outs)), m.seed)
    sh.write_manifest(new)
    return new, results


def search(manifest: sh.Manifest | sh.StrPath, queries: npt.ArrayLike,
           k: SupportsIndex = 10, timeout: float = 600,
           queue: str | None = None) -> tuple[sh.Floats32, sh.Ids]:
    """Global top-k of queries ((Q, D) or (D,)) over the manifest's shards:
    (scores, ids), each (Q, k).  One search_shard task per shard."""
    m = manifest if isinstance(manifest, sh.Manifest) else \
        sh.load_manifest(manifest)
    q = sh.as_queries(queries, m.dim)
    k = sh.check_k(k, m.rows)
    qs = q.tolist()
    job = _send(group(search_shard.s(s.path, qs, k, s.offset, m.normalized)
                      for s in m.shards), queue)
    try:
        parts = job.get(timeout=timeout, interval=POLL)
    except BaseException:
        job.revoke()
        raise
    return sh.merge_top_k([(p["scores"], p["ids"]) for p in parts], k)


def reference_top_k(manifest: sh.Manifest | sh.StrPath,
                    queries: npt.ArrayLike,
                    k: int) -> tuple[sh.Floats32, sh.Ids]:
    """The single-process answer: offloop.blocking.top_k over the
    concatenated shards (read into memory: for checks on small data)."""
    m = manifest if isinstance(manifest, sh.Manifest) else \
        sh.load_manifest(manifest)
    whole = np.concatenate([sh.open_shard(s.path) for s in m.shards])
    return offloop.blocking.top_k(sh.as_queries(queries, m.dim), whole, k=k,
                                  normalized=m.normalized)


def _cmd_normalize(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    new, results = normalize_all(args.manifest, args.out_dir, args.timeout)
    dt = time.perf_counter() - t0
    pids = {r["pid"] for r in results}
    written = sum(r["written"] for r in results)
    print(f"normalized {new.rows:,} rows in {len(results)} shards "
          f"({written} written, {len(results) - written} already there) in "
          f"{dt:.2f} s: {new.rows / dt:,.0f} rows/s over {len(pids)} worker "
          f"processes; manifest {new.path}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    m = sh.load_manifest(args.manifest)
    rng = np.random.default_rng(args.seed)
    q = rng.standard_normal((args.queries, m.dim), dtype=np.float32)
    t0 = time.perf_counter()
    got: list[tuple[sh.Floats32, sh.Ids]] = []
    with tqdm(total=args.queries, unit="queries", desc="search",
              disable=None) as bar:
        for lo in range(0, args.queries, args.batch):
            got.append(search(m, q[lo:lo + args.batch], args.k,
                              args.timeout))
            bar.update(len(q[lo:lo + args.batch]))
    dt = time.perf_counter() - t0
    ids = np.concatenate([g[1] for g in got])
    line = (f"searched {args.queries} queries (batches of {args.batch}) "
            f"over {m.rows:,} rows in {len(m.shards)} shards in {dt:.2f} s: "
            f"{args.queries / dt:,.1f} queries/s")
    if args.check:
        ref = reference_top_k(m, q, args.k)[1]
        same = bool(np.array_equal(ids, ref))
        line += f"; same indices as one process: {same}"
        if not same:
            print(line)
            return 1
    print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("normalize")
    n.add_argument("manifest")
    n.add_argument("out_dir")
    n.add_argument("--timeout", type=float, default=3600)
    s = sub.add_parser("search")
    s.add_argument("manifest")
    s.add_argument("--queries", type=int, default=100)
    s.add_argument("--batch", type=int, default=100)
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--timeout", type=float, default=600)
    s.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    try:
        return (_cmd_normalize if args.cmd == "normalize" else
                _cmd_search)(args)
    except sh.ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
