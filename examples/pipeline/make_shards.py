"""Write N .npy shards of seeded float32 vectors and their manifest.

Shard s holds rows drawn from numpy's default_rng([seed, s]) (standard
normal), so any shard can be rebuilt alone and the data set does not
depend on how many processes wrote it.  Each shard is written chunk by
chunk into a memory-mapped file under a temporary name and renamed when
complete: memory stays bounded whatever the shard size.

    python make_shards.py OUT_DIR [--rows 30000] [--dim 64] [--shards 4]
    python make_shards.py OUT_DIR --rows 3000000 --dim 768 --shards 8
    python make_shards.py OUT_DIR --big --dry-run   # the users' sizes

--big takes the users' sizes (200,000,000 x 768 in 400 shards of 500,000
rows: 614 GB of float32), meant for a machine or a shared file system that
holds them; --dry-run prints the plan and writes nothing.
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import shards as sh

BIG = {"rows": 200_000_000, "dim": 768, "shards": 400}
WRITE_CHUNK = 65536  # rows generated at once


def shard_sizes(rows: int, n: int) -> list[int]:
    """Split rows into n shards as evenly as possible, in order."""
    if n < 1 or rows < n:
        raise ValueError(f"need 1 <= shards <= rows, got {n} shards for "
                         f"{rows} rows")
    base, extra = divmod(rows, n)
    return [base + (s < extra) for s in range(n)]


# "tqdm[Any]" quoted: tqdm is generic in its stubs, not at run time.
def write_shard(path: sh.StrPath, rows: int, dim: int, seed: int, index: int,
                bar: "tqdm[Any] | None" = None) -> None:
    rng = np.random.default_rng([seed, index])
    with sh.atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(rows, dim))
        for lo in range(0, rows, WRITE_CHUNK):
            hi = min(lo + WRITE_CHUNK, rows)
            out[lo:hi] = rng.standard_normal((hi - lo, dim),
                                             dtype=np.float32)
            if bar is not None:
                bar.update(hi - lo)
        out.flush()
        del out


def make_shards(out_dir: sh.StrPath, rows: int = 30_000, dim: int = 64,
                shards: int = 4, seed: int = 0,
                progress: bool | None = None) -> sh.Manifest:
    """Write the shards and out_dir/manifest.json; return the Manifest.
    progress: None shows a bar on a terminal only, False never."""
    sizes = shard_sizes(rows, shards)
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    infos: list[sh.ShardInfo] = []
    offset = 0
    with tqdm(total=rows, unit="rows", unit_scale=True, desc="shards",
              disable=None if progress is None else not progress) as bar:
        for s, n in enumerate(sizes):
            path = out_dir / f"shard-{s:05d}.npy"
            write_shard(path, n, dim, seed, s, bar)
            infos.append(sh.ShardInfo(str(path), n, offset))
            offset += n
            bar.set_postfix_str(f"{s + 1}/{shards} shards")
    manifest = sh.Manifest(str(out_dir / "manifest.json"), dim, rows, False,
                           tuple(infos), seed)
    sh.write_manifest(manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--rows", type=int, default=30_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--big", action="store_true",
                   help="the users' sizes: 200M x 768 in 400 shards")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan, write nothing")
    args = p.parse_args(argv)
    if args.big:
        args.rows, args.dim, args.shards = BIG["rows"], BIG["dim"], \
            BIG["shards"]
    size = args.rows * args.dim * 4
    plan = (f"{args.rows:,} rows x {args.dim} float32 in {args.shards} "
            f"shards: {size / 1e9:,.1f} GB in {args.out_dir}")
    if args.dry_run:
        print("would write", plan)
        return 0
    t0 = time.perf_counter()
    m = make_shards(args.out_dir, args.rows, args.dim, args.shards,
                    args.seed)
    dt = time.perf_counter() - t0
    print(f"wrote {plan} in {dt:.1f} s ({args.rows / dt:,.0f} rows/s); "
          f"manifest {m.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
