"""The Celery app: normalize and search shards on offloop, in prefork
worker processes, with Redis as broker and result backend.

    redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no
    cd examples/pipeline
    celery -A celery_app worker --pool prefork --concurrency 2
    python celery_driver.py normalize /tmp/shards/manifest.json /tmp/norm

OFFLOOP_REDIS_URL names the Redis database (default
redis://127.0.0.1:6379/0).

Tasks
-----
normalize_shard(path, out_path)
    offloop.blocking.batch_normalize over the shard, written to a new shard
    renamed into place when complete (shards.normalize_file).
search_shard(path, query, k, offset=0, normalized=False)
    the shard's local top-k with global row ids (row + offset).
pool_report()
    this process's pid, its parent's, and offloop.stats() here.

Nothing is lost when a worker process dies mid-task: acks_late acks a
message only after its task returned, and reject_on_worker_lost puts the
message of a task whose process died back on the queue, so another process
runs it again.  normalize_shard is idempotent (an output already renamed
into place is kept) and its temporary file carries its pid, so a rerun
never sees or extends a half-written file.  OSErrors other than a missing
file are retried with backoff.

Fork: the worker's main process uses offloop before it forks its children
(worker_init below, as an app that touches offloop at import would), so
offloop's pool is running in the parent at fork.  Each child must get a
fresh pool on first use (DESIGN invariant 7); pool_report() and each
normalize_shard result carry the pid and offloop.stats() of the child that
ran it, which tests/test_pipeline.py checks.
"""

import os
from typing import Any, TypedDict

import numpy as np
from celery import Celery, Task, signals

import offloop
import offloop.blocking

import shards as sh

REDIS_URL = os.environ.get("OFFLOOP_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("offloop_pipeline", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # One message reserved per process at a time: a process that dies
    # holds (and hands back) only the task it was running.
    worker_prefetch_multiplier=1,
    task_track_started=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=24 * 3600,
    broker_connection_retry_on_startup=True,
    # A message unacked this long is handed to another worker even if its
    # holder looks alive: longer than any one shard task takes.
    broker_transport_options={"visibility_timeout": 3600},
    result_backend_transport_options={"visibility_timeout": 3600},
    worker_hijack_root_logger=False,
)


class RetryOptions(TypedDict):
    """Celery's automatic retry options, as app.task() takes them."""
    autoretry_for: tuple[type[BaseException], ...]
    dont_autoretry_for: tuple[type[BaseException], ...]
    retry_backoff: int
    retry_backoff_max: int
    max_retries: int


RETRY: RetryOptions = {
    "autoretry_for": (OSError,),
    "dont_autoretry_for": (FileNotFoundError, ValueError),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "max_retries": 5,
}

#: The main worker process's pid and offloop.stats() once its pool ran,
#: before it forked the children (they inherit these values).
PARENT: dict[str, Any] = {}


@signals.worker_init.connect
def _warm_offloop_before_fork(**_: object) -> None:
    m = np.ones((4096, 64), np.float32)
    offloop.blocking.top_k(m[0], m, k=1)  # big enough for the pool
    PARENT.update(pid=os.getpid(), stats=offloop.stats())


def _whoami() -> dict[str, Any]:
    return {"pid": os.getpid(), "ppid": os.getppid(),
            "parent": dict(PARENT), "stats": offloop.stats()}


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True, **RETRY)
def normalize_shard(self: Task[..., Any], path: str,
                    out_path: str) -> dict[str, Any]:
    """Normalize shard path into out_path; returns rows, jobs, written
    (False if out_path was already complete), pid and offloop.stats()."""
    done = sh.normalize_file(path, out_path)
    return {"path": path, "out_path": str(out_path),
            "retries": self.request.retries,
            "redelivered": bool((self.request.delivery_info or {}).get(
                "redelivered")), **done, **_whoami()}


#: Shards this process has mapped, by path: mapped once, reused by every
#: query.  A path whose file changed (size or mtime) is mapped again.
_MAPPED: dict[str, tuple[tuple[int, int], sh.Floats32]] = {}


def _mapped(path: str) -> sh.Floats32:
    st = os.stat(path)
    key = (st.st_size, st.st_mtime_ns)
    cached = _MAPPED.get(path)
    if cached is None or cached[0] != key:
        cached = _MAPPED[path] = (key, sh.open_shard(path))
    return cached[1]


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True, **RETRY)
def search_shard(self: Task[..., Any], path: str,
                 query: list[float] | list[list[float]], k: int,
                 offset: int = 0, normalized: bool = False) -> dict[str, Any]:
    """Local top-k of query (D floats, or a list of them) over one shard:
    {"scores": [[...]], "ids": [[...]]} per query, ids global."""
    m = _mapped(path)
    queries = sh.as_queries(query, m.shape[1])
    scores, ids = sh.search_array(m, queries, int(k), int(offset),
                                  bool(normalized))
    return {"scores": scores.tolist(), "ids": ids.tolist(),
            "pid": os.getpid()}


@app.task
def pool_report() -> dict[str, Any]:
    return _whoami()
