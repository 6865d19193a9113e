"""Shards of float32 vectors on disk, their manifest, and the work on one
shard that both engines run (celery_app.py's tasks, dask_search.py's).

A data set is N ``.npy`` files of float32 rows plus a manifest, a JSON
file beside them::

    {"version": 1, "dim": 768, "dtype": "float32", "rows": 3000,
     "normalized": false, "seed": 0,
     "shards": [{"path": "shard-00000.npy", "rows": 1000, "offset": 0},
                {"path": "shard-00001.npy", "rows": 1000, "offset": 1000},
                ...]}

Shard paths are relative to the manifest's directory; ``offset`` is the
global id of a shard's first row, so row r of shard s is global row
``s.offset + r`` and the shards' offsets tile 0..rows without a gap.

Shards are only ever read through ``np.load(mmap_mode="r")``: a worker maps
the file, the page cache holds it once per machine, and nothing is copied.
A new shard is written under a temporary name in the same directory and
renamed over the final name once complete and synced, so a reader (or a
retried task) never sees a half-written file under the final name.

Exactness: a row's cosine score does not depend on which shard holds it,
so each shard's local top-k, its ids shifted by the shard's offset, merged
by (score descending, global id ascending) as offloop.top_k orders ties,
gives the same indices as one top_k over the concatenated matrix.
"""

import json
import operator
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, NoReturn, SupportsIndex, TypeAlias, TypedDict

import numpy as np
import numpy.typing as npt

import offloop.blocking

MANIFEST_VERSION = 1
#: Rows per batch_normalize call when a shard is normalized: bounds the
#: memory a task touches at once (64 Ki rows x 768 floats = 192 MiB).
CHUNK_ROWS = 65536


#: A file name: a str or a pathlib.Path.
StrPath: TypeAlias = str | os.PathLike[str]
Floats32: TypeAlias = npt.NDArray[np.float32]
Ids: TypeAlias = npt.NDArray[np.int64]


class ManifestError(ValueError):
    """A manifest or one of its shards is unusable; says which and why."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its absolute path, its row count, its first global id."""
    path: str
    rows: int
    offset: int


@dataclass(frozen=True)
class Manifest:
    path: str
    dim: int
    rows: int
    normalized: bool
    shards: tuple[ShardInfo, ...]
    seed: int | None = None

    def to_json(self) -> dict[str, object]:
        base = Path(self.path).parent
        return {
            "version": MANIFEST_VERSION, "dim": self.dim,
            "dtype": "float32", "rows": self.rows,
            "normalized": self.normalized, "seed": self.seed,
            "shards": [{"path": os.path.relpath(s.path, base),
                        "rows": s.rows, "offset": s.offset}
                       for s in self.shards],
        }


def _fail(path: Path, why: str) -> NoReturn:
    raise ManifestError(f"manifest {path}: {why}")


def _nonneg_int(value: object, what: str, path: Path,
                minimum: int = 0) -> int:
    if type(value) is not int or value < minimum:
        _fail(path, f"{what} must be an int >= {minimum}, got {value!r}")
    return value


def load_manifest(path: StrPath, check_files: bool = True) -> Manifest:
    """Read and check a manifest; return a Manifest with absolute paths.

    Raises ManifestError (a ValueError) naming the manifest and the field
    or shard at fault: not JSON, a missing or mistyped field, a dtype other
    than float32, offsets that do not tile the rows.  With check_files
    (the default), every shard must exist and hold float32 rows of the
    manifest's shape, which is checked from the .npy headers only.
    """
    path = Path(path).resolve()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"manifest {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest {path}: unreadable: {exc}") from None
    if not isinstance(data, dict):
        _fail(path, "must be a JSON object")
    if data.get("version") != MANIFEST_VERSION:
        _fail(path, f"version must be {MANIFEST_VERSION}, "
                    f"got {data.get('version')!r}")
    if data.get("dtype") != "float32":
        _fail(path, f"dtype must be 'float32', got {data.get('dtype')!r}")
    dim = _nonneg_int(data.get("dim"), "dim", path, 1)
    rows = _nonneg_int(data.get("rows"), "rows", path, 1)
    normalized = data.get("normalized", False)
    if not isinstance(normalized, bool):
        _fail(path, f"normalized must be true or false, got {normalized!r}")
    entries = data.get("shards")
    if not isinstance(entries, list) or not entries:
        _fail(path, "shards must be a non-empty list")
    shards: list[ShardInfo] = []
    next_offset = 0
    for n, entry in enumerate(entries):
        where = f"shards[{n}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"),
                                                         str):
            _fail(path, f"{where} must be an object with a 'path' string")
        srows = _nonneg_int(entry.get("rows"), f"{where}.rows", path, 1)
        offset = _nonneg_int(entry.get("offset"), f"{where}.offset", path)
        if offset != next_offset:
            _fail(path, f"{where}.offset is {offset}, expected {next_offset} "
                        f"(offsets must tile the rows in order)")
        next_offset += srows
        shards.append(ShardInfo(str(path.parent / entry["path"]), srows,
                                offset))
    if next_offset != rows:
        _fail(path, f"the shards hold {next_offset} rows, rows says {rows}")
    if check_files:
        for n, s in enumerate(shards):
            try:
                check_shard_header(s.path, s.rows, dim)
            except (OSError, ValueError) as exc:
                _fail(path, f"shards[{n}]: {exc}")
    seed = data.get("seed")
    return Manifest(str(path), dim, rows, normalized, tuple(shards),
                    seed if type(seed) is int else None)


def write_manifest(manifest: Manifest) -> None:
    """Write manifest.to_json() to manifest.path atomically."""
    text = json.dumps(manifest.to_json(), indent=1) + "\n"
    with atomic_path(manifest.path) as tmp:
        Path(tmp).write_text(text)


def check_shard_header(path: StrPath, rows: int | None = None,
                       dim: int | None = None) -> tuple[int, ...]:
    """Check a .npy file's header: float32, 2-D, C order, the given shape.
    Returns its shape.  Raises FileNotFoundError or ValueError naming it."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"shard {path}: no such file")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
        except ValueError as exc:
            raise ValueError(f"shard {path}: not a .npy file: {exc}") \
                from None
    if dtype != np.float32 or fortran or len(shape) != 2:
        raise ValueError(f"shard {path}: must hold 2-D C-order float32 "
                         f"rows, got {dtype} {shape}"
                         f"{' in Fortran order' if fortran else ''}")
    expected = (rows if rows is not None else shape[0],
                dim if dim is not None else shape[1])
    if shape != expected:
        raise ValueError(f"shard {path}: shape {shape}, the manifest says "
                         f"{expected}")
    return shape


def open_shard(path: StrPath, rows: int | None = None,
               dim: int | None = None) -> Floats32:
    """The shard's rows, memory-mapped read-only (np.load(mmap_mode='r'))."""
    check_shard_header(path, rows, dim)
    mapped: Floats32 = np.load(path, mmap_mode="r")  # an np.memmap
    return mapped


# ---- writing a file atomically ------------------------------------------


class atomic_path:
    """``with atomic_path(final) as tmp:`` write tmp; on a clean exit tmp is
    synced and renamed over final (and the directory synced), on an
    exception it is removed.  tmp is a hidden name in final's directory
    that carries this host and pid, so stale ones of dead writers can be
    found (remove_stale_temps) and two writers never share one."""

    def __init__(self, final: StrPath) -> None:
        self.final = Path(final)
        self.tmp = self.final.with_name(
            f".{self.final.name}.{socket.gethostname()}.{os.getpid()}.tmp")

    def __enter__(self) -> str:
        return str(self.tmp)

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return False
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.final)
        dfd = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the rename itself survives a crash
        finally:
            os.close(dfd)
        return False


def remove_stale_temps(final: StrPath) -> None:
    """Remove temporaries of ``final`` left by dead writers on this host
    (a worker killed mid-write).  Live writers' files are left alone."""
    final = Path(final)
    prefix = f".{final.name}.{socket.gethostname()}."
    for tmp in final.parent.glob(f"{glob_escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix):-len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- the work on one shard ---------------------------------------------


class Normalized(TypedDict):
    """What normalize_file() did: rows of the shard, offloop calls made,
    and whether it wrote out_path (False: it was already complete)."""
    rows: int
    jobs: int
    written: bool


def normalize_file(path: StrPath, out_path: StrPath,
                   chunk_rows: int = CHUNK_ROWS) -> Normalized:
    """L2-normalize every row of shard ``path`` into a new shard
    ``out_path`` with offloop.blocking.batch_normalize, chunk by chunk.

    Idempotent: if ``out_path`` already holds a complete shard of the same
    shape (an earlier attempt renamed it but died before reporting), it is
    kept and nothing is recomputed.  Returns {"rows", "jobs", "written"}:
    jobs is the number of offloop calls made here.
    """
    src = open_shard(path)
    rows, dim = src.shape
    out_path = Path(out_path)
    if out_path.exists():
        check_shard_header(out_path, rows, dim)
        return {"rows": rows, "jobs": 0, "written": False}
    remove_stale_temps(out_path)
    jobs = 0
    with atomic_path(out_path) as tmp:
        dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(rows, dim))
        for lo in range(0, rows, chunk_rows):
            hi = min(lo + chunk_rows, rows)
            offloop.blocking.batch_normalize(src[lo:hi], out=dst[lo:hi])
            jobs += 1
            if lo == 0:
                dst.flush()
                _test_hold(Path(path).name)
        dst.flush()
        del dst
    return {"rows": rows, "jobs": jobs, "written": True}


def as_queries(query: npt.ArrayLike, dim: int) -> Floats32:
    """query as a (Q, dim) float32 array; a (dim,) query gives Q = 1.
    Raises ValueError naming 'query' on a wrong shape."""
    q = np.asarray(query, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim or q.shape[0] == 0:
        raise ValueError(f"query must be {dim} floats or a non-empty list "
                         f"of them, got shape {np.shape(query)}")
    return np.ascontiguousarray(q)


def check_k(k: SupportsIndex, rows: int) -> int:
    """k as an int in [1, rows]; TypeError/ValueError naming 'k'."""
    if isinstance(k, bool):
        raise TypeError("k must be an int, not bool")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an int, not {type(k).__name__}") from None
    if not 1 <= k <= rows:
        raise ValueError(f"k must be between 1 and {rows} (the rows), "
                         f"got {k}")
    return k


def search_array(m: Floats32, queries: Floats32, k: SupportsIndex,
                 offset: int = 0,
                 normalized: bool = False) -> tuple[Floats32, Ids]:
    """Local top-k of each query over one shard's rows: (scores, ids), both
    (Q, min(k, rows)), ids global (shifted by offset)."""
    k = min(operator.index(k), len(m))  # top_k wants a Python int
    # An array Dask unpickled from a message may sit at any byte offset in
    # its frame; offloop's kernels load whole floats, so give them aligned
    # data (a copy only when it is not; a mapped .npy shard always is).
    queries = np.require(queries, np.float32, ["C", "A"])
    m = np.require(m, np.float32, ["C", "A"])
    scores, ids = offloop.blocking.top_k(queries, m, k=k,
                                         normalized=normalized)
    return scores, ids + offset


#: One shard's local top-k: (scores, global ids), each (Q, k_s), as arrays
#: or as the nested lists a task's JSON result holds.
Part: TypeAlias = tuple[Floats32 | Sequence[Sequence[float]],
                        Ids | Sequence[Sequence[int]]]


def merge_top_k(parts: Sequence[Part], k: int) -> tuple[Floats32, Ids]:
    """Merge per-shard (scores, global ids) lists, each (Q, k_s), into the
    global (scores, ids), each (Q, k): score descending, then id ascending,
    NaN after every number, as offloop.top_k orders them."""
    scores = np.concatenate([np.asarray(s, np.float32).reshape(len(s), -1)
                             for s, _ in parts], axis=1)
    ids = np.concatenate([np.asarray(i, np.int64).reshape(len(i), -1)
                          for _, i in parts], axis=1)
    out_s = np.empty((len(scores), k), np.float32)
    out_i = np.empty((len(scores), k), np.int64)
    for q in range(len(scores)):
        # lexsort: the last key is the primary one.
        order = np.lexsort((ids[q], -scores[q], np.isnan(scores[q])))[:k]
        out_s[q], out_i[q] = scores[q][order], ids[q][order]
    return out_s, out_i


# ---- a test gate ---------------------------------------------------------

#: Directory of the test gate; unset (always, outside the tests) it does
#: nothing.  tests/test_pipeline.py sets it in the workers it starts.
HOLD_ENV = "OFFLOOP_PIPELINE_TEST_HOLD"
HOLD_SECONDS = 120


def _test_hold(tag: str) -> None:
    """Hold this task here, once, if the test armed ``tag``.

    The test creates ``$HOLD/arm-<tag>``; the first task to reach the gate
    renames it (atomic: exactly one claims it), writes ``held-<tag>`` with
    its pid and blocks, so that the test can SIGKILL it mid-task.  A retry
    finds no arm and passes.  The hold is bounded: past HOLD_SECONDS the
    task fails instead of hanging a worker forever.
    """
    hold = os.environ.get(HOLD_ENV)
    if not hold:
        return
    try:
        os.rename(os.path.join(hold, f"arm-{tag}"),
                  os.path.join(hold, f"claimed-{tag}"))
    except FileNotFoundError:
        return
    with atomic_path(os.path.join(hold, f"held-{tag}")) as tmp:
        Path(tmp).write_text(str(os.getpid()))
    threading.Event().wait(HOLD_SECONDS)
    raise RuntimeError(f"test hold {tag}: not killed in {HOLD_SECONDS} s")
