"""The same search on a Dask distributed cluster: shards loaded once and
kept on the workers, queries fanned out per shard, the local top-k lists
merged into the global one.

    cd examples/pipeline     # the scheduler and the workers import
                             # shards.py and this module
    PYTHONPATH=$PWD dask scheduler --host 127.0.0.1 --port 8786 &
    PYTHONPATH=$PWD dask worker tcp://127.0.0.1:8786 --nthreads 1 &
    python dask_search.py MANIFEST --scheduler tcp://127.0.0.1:8786 --check
    python dask_search.py MANIFEST --local 2    # a LocalCluster instead

How it runs
-----------
ShardSet(client, manifest) submits one load_shard task per shard, spread
over the workers; the futures are held, so each shard stays loaded (mapped
with np.load(mmap_mode="r")) on its worker and every query reuses it.  A
search submits one search_shard task per shard; Dask runs it where the
shard's future lives, so no rows cross the network.  A Shard pickles as its
path: if Dask moves a task and copies its shard to another worker (work
stealing), the receiving worker maps the file once and keeps the copy
(shards live on storage every worker sees: a shared file system, or a copy
per node).

A worker killed mid-query: the scheduler sees its connection close, runs
the lost load_shard again on a live worker (the held future keeps its
recipe) and the query's task after it; the answer is the same.  Tasks that
raise are retried twice (retries=2).

Inside a worker each task calls offloop.blocking.top_k, which runs on that
process's offloop pool; give each worker one Dask thread (--nthreads 1) and
let offloop use the cores.  ShardSet.asearch is the same search for an
asynchronous Client (cluster_app.py's /search awaits it).
"""

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import SupportsIndex, TypeAlias

import numpy as np
import numpy.typing as npt
from distributed import Client, Future, LocalCluster, wait
from tqdm import tqdm

import shards as sh


#: How many times this process mapped each shard (by path): 1 each when
#: shards stay loaded and are reused (see mapped_counts).
_MAPPED: dict[str, int] = {}


def mapped_counts() -> dict[str, int]:
    """{path: times mapped} in this process; client.run(mapped_counts)
    asks every worker."""
    return dict(_MAPPED)


class Shard:
    """A loaded shard: its rows mapped read-only in this process, its
    offset.  Pickles as (path, offset, rows, dim) and maps again on the
    other side; sizeof() sees a small object, so Dask moves it freely."""

    def __init__(self, path: str, offset: int, rows: int, dim: int) -> None:
        self.path, self.offset, self.rows, self.dim = path, offset, rows, dim
        self.array = sh.open_shard(path, rows, dim)
        _MAPPED[path] = _MAPPED.get(path, 0) + 1

    def __reduce__(self) -> tuple[type["Shard"], tuple[str, int, int, int]]:
        return (Shard, (self.path, self.offset, self.rows, self.dim))

    def __sizeof__(self) -> int:
        return 256


def load_shard(path: str, offset: int, rows: int, dim: int) -> Shard:
    return Shard(path, offset, rows, dim)


#: search_shard's answer: local (scores, global ids) and the worker's pid.
Part: TypeAlias = tuple[sh.Floats32, sh.Ids, int]


def search_shard(shard: Shard, queries: sh.Floats32, k: int,
                 normalized: bool) -> Part:
    """Local top-k over one shard, ids global; also says which process."""
    sh._test_hold(f"search-{os.path.basename(shard.path)}")
    scores, ids = sh.search_array(shard.array, queries, k, shard.offset,
                                  normalized)
    return scores, ids, os.getpid()


class ShardSet:
    """The manifest's shards, loaded on the cluster behind client.

    Build it with ShardSet.start(client, manifest), or with
    ``await ShardSet.astart(client, manifest)`` for an asynchronous
    Client.  The manifest is checked first (ManifestError)."""

    def __init__(self, client: Client, manifest: sh.Manifest | sh.StrPath,
                 workers: Iterable[str]) -> None:
        self.client = client
        self.manifest = manifest if isinstance(manifest, sh.Manifest) else \
            sh.load_manifest(manifest)
        m = self.manifest
        workers = sorted(workers)
        self.futures: list[Future[Shard]] = [
            client.submit(load_shard, s.path, s.offset, s.rows, m.dim,
                          # spread the shards; any worker may take over
                          workers=[workers[i % len(workers)]] if workers
                          else None,
                          allow_other_workers=True)
            for i, s in enumerate(m.shards)]
        self.last_pids: set[int] = set()

    @classmethod
    def start(cls, client: Client,
              manifest: sh.Manifest | sh.StrPath) -> "ShardSet":
        return cls(client, manifest, client.nthreads())

    @classmethod
    async def astart(cls, client: Client,
                     manifest: sh.Manifest | sh.StrPath) -> "ShardSet":
        return cls(client, manifest, await client.nthreads())

    def _submit(self, queries: npt.ArrayLike,
                k: SupportsIndex) -> tuple[list[Future[Part]], int]:
        m = self.manifest
        q = sh.as_queries(queries, m.dim)
        k = sh.check_k(k, m.rows)
        futs: list[Future[Part]] = [self.client.submit(search_shard, f, q, k, m.normalized,
                                   retries=2, pure=False)
                for f in self.futures]
        return futs, k

    def _merge(self, parts: Sequence[Part],
               k: int) -> tuple[sh.Floats32, sh.Ids]:
        self.last_pids = {p[2] for p in parts}
        return sh.merge_top_k([(p[0], p[1]) for p in parts], k)

    def search(self, queries: npt.ArrayLike, k: SupportsIndex = 10,
               timeout: float | None = None
               ) -> tuple[sh.Floats32, sh.Ids]:
        """Global top-k of queries ((Q, D) or (D,)): (scores, ids), (Q, k).
        Bad queries or k raise at the call, before anything is submitted;
        past timeout seconds (None: no limit), TimeoutError."""
        futs, k = self._submit(queries, k)
        try:
            wait(futs, timeout=timeout)
            return self._merge(self.client.gather(futs), k)
        except BaseException:
            self.client.cancel(futs)
            raise

    async def asearch(self, queries: npt.ArrayLike, k: SupportsIndex = 10,
                      timeout: float | None = None
                      ) -> tuple[sh.Floats32, sh.Ids]:
        """search() for a Client(asynchronous=True): awaits the cluster."""
        futs, k = self._submit(queries, k)
        try:
            async with asyncio.timeout(timeout):
                return self._merge(await self.client.gather(futs), k)
        except BaseException:
            await self.client.cancel(futs)
            raise

    def close(self) -> None:
        for f in self.futures:
            f.release()
        self.futures = []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("manifest")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--scheduler", help="e.g. tcp://127.0.0.1:8786")
    where.add_argument("--local", type=int, metavar="N",
                       help="start a LocalCluster of N worker processes")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--check", action="store_true",
                   help="compare with offloop.blocking.top_k in one process")
    args = p.parse_args(argv)
    try:
        m = sh.load_manifest(args.manifest)
    except sh.ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cluster = None
    if args.local:
        cluster = LocalCluster(n_workers=args.local, threads_per_worker=1,
                               processes=True, host="127.0.0.1",
                               dashboard_address=None)
    client = Client(cluster if cluster else args.scheduler)
    try:
        client.wait_for_workers(1, timeout=60)
        shards = ShardSet.start(client, m)
        q = np.random.default_rng(args.seed).standard_normal(
            (args.queries, m.dim), dtype=np.float32)
        t0 = time.perf_counter()
        got: list[tuple[sh.Floats32, sh.Ids]] = []
        with tqdm(total=args.queries, unit="queries", desc="search",
                  disable=None) as bar:
            for lo in range(0, args.queries, args.batch):
                got.append(shards.search(q[lo:lo + args.batch], args.k))
                bar.update(len(q[lo:lo + args.batch]))
        dt = time.perf_counter() - t0
        ids = np.concatenate([g[1] for g in got])
        line = (f"searched {args.queries} queries (batches of {args.batch}) "
                f"over {m.rows:,} rows in {len(m.shards)} shards on "
                f"{len(client.nthreads())} Dask workers in "
                f"{dt:.2f} s: {args.queries / dt:,.1f} queries/s")
        ok = True
        if args.check:
            import offloop.blocking
            whole = np.concatenate([sh.open_shard(s.path)
                                    for s in m.shards])
            ref = offloop.blocking.top_k(q, whole, k=args.k,
                                         normalized=m.normalized)[1]
            ok = bool(np.array_equal(ids, ref))
            line += f"; same indices as one process: {ok}"
        print(line)
        return 0 if ok else 1
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    # Run as the module dask_search, not __main__, so that the workers
    # unpickle Shard and the task functions by reference.
    import dask_search
    sys.exit(dask_search.main())
