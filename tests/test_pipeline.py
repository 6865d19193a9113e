"""examples/pipeline end to end, on loopback, with the real services.

Without services: the shard maker and its manifest, every manifest error,
the merge of per-shard top-k lists against offloop.blocking.top_k over the
concatenated shards (ties and NaN included), and the atomic write of a
normalized shard (a writer SIGKILLed half-way leaves nothing under the
final name).

With services, started here and stopped by PID in fixture teardown
(SIGTERM, then SIGKILL of the process group), even when a test fails:

- redis-server on 127.0.0.1 at a free port (--save '' --appendonly no, in
  a tmp dir), the Celery broker and result backend;
- ``celery -A celery_app worker --pool prefork --concurrency 2``;
- ``dask scheduler`` and three ``dask worker --no-nanny`` processes.

The tests that need redis-server skip, saying so, when it is not on PATH
(.ci/run installs it, so CI never skips them).  A task is held mid-way,
so it can be killed there, by the examples' test gate (shards._test_hold):
the test arms it with a file and waits for the file the held task writes.
Every wait is on a condition (celery ping, a result with a timeout,
client.wait_for_workers, a file appearing) with a deadline; none sleeps
for a fixed time.
"""

import concurrent.futures
import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import offloop.blocking

pytest.importorskip("celery")
pytest.importorskip("distributed")
pytest.importorskip("tqdm")

ROOT = pathlib.Path(__file__).resolve().parent.parent
PIPE = ROOT / "examples" / "pipeline"
sys.path.insert(0, str(PIPE))

import make_shards  # noqa: E402
import shards as sh  # noqa: E402

DEADLINE = 30  # seconds, for every wait below
ROWS, DIM, SHARDS = 6001, 64, 4  # uneven shards of ~1500 rows: on the pool
HOLD_ENV = sh.HOLD_ENV


# ---- helpers -------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(predicate, what, timeout=DEADLINE):
    """Wait for predicate() to be true (checked every 10 ms), or fail."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def _start(cmd, log, env=None, cwd=None):
    """Start a service in its own process group, output to log."""
    out = open(log, "ab")
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)
    finally:
        out.close()


def _stop(proc, timeout=10):
    """Stop a service started by _start: SIGTERM, then SIGKILL to its
    process group (a prefork worker's children included)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout)


def _service_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PIPE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra)
    return env


def _tail(path, n=30):
    with contextlib.suppress(OSError):
        return "\n".join(pathlib.Path(path).read_text(
            errors="replace").splitlines()[-n:])
    return ""


def _concat(manifest):
    return np.concatenate([sh.open_shard(s.path) for s in manifest.shards])


def _queries(n, seed=7):
    return np.random.default_rng(seed).standard_normal((n, DIM),
                                                      dtype=np.float32)


def _held_pid(hold, tag):
    """Wait for the task held at the gate ``tag``; return its pid."""
    f = pathlib.Path(hold) / f"held-{tag}"
    _until(f.exists, f"a task to reach the test gate {tag}")
    return int(f.read_text())


# ---- data ----------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    return make_shards.make_shards(d, ROWS, DIM, SHARDS, seed=3,
                                   progress=False)


def test_make_shards_writes_seeded_shards_and_a_manifest(data, tmp_path):
    m = sh.load_manifest(data.path)
    assert (m.dim, m.rows, m.normalized, m.seed) == (DIM, ROWS, False, 3)
    assert [s.rows for s in m.shards] == [1501, 1500, 1500, 1500]
    assert [s.offset for s in m.shards] == [0, 1501, 3001, 4501]
    raw = json.loads(pathlib.Path(m.path).read_text())
    assert raw["shards"][1]["path"] == "shard-00001.npy"  # relative
    a = sh.open_shard(m.shards[2].path)
    assert isinstance(a, np.memmap) and not a.flags.writeable
    assert a.dtype == np.float32 and a.shape == (1500, DIM)
    # A shard depends only on (seed, its index): a rebuild of shard 2 alone
    # is the same bytes.
    make_shards.write_shard(tmp_path / "again.npy", 1500, DIM, 3, 2)
    assert np.array_equal(np.load(tmp_path / "again.npy"), a)
    assert not list(pathlib.Path(m.path).parent.glob(".*"))  # no temps


def test_make_shards_refuses_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="shards <= rows"):
        make_shards.make_shards(tmp_path, rows=3, shards=4, progress=False)
    with pytest.raises(ValueError, match="dim must be"):
        make_shards.make_shards(tmp_path, rows=8, dim=0, progress=False)
    assert make_shards.main([str(tmp_path / "big"), "--big",
                             "--dry-run"]) == 0
    assert not (tmp_path / "big").exists()


# ---- manifest errors -----------------------------------------------------


def _copy_data(data, dest):
    src = pathlib.Path(data.path).parent
    shutil.copytree(src, dest)
    return dest / "manifest.json"


def _edit(path, fn):
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize("mutate, match", [
    (lambda p: p.write_text("{not json"), "unreadable"),
    (lambda p: p.write_text("[1, 2]"), "must be a JSON object"),
    (lambda p: p.unlink(), "no such file"),
    (lambda p: _edit(p, lambda o: o.update(version=2)), "version must be 1"),
    (lambda p: _edit(p, lambda o: o.update(dtype="float64")),
     "dtype must be 'float32'"),
    (lambda p: _edit(p, lambda o: o.update(dim=0)), "dim must be an int"),
    (lambda p: _edit(p, lambda o: o.update(dim=True)), "dim must be an int"),
    (lambda p: _edit(p, lambda o: o.update(shards=[])),
     "shards must be a non-empty list"),
    (lambda p: _edit(p, lambda o: o["shards"][2].update(offset=3000)),
     r"shards\[2\].offset is 3000, expected 3001"),
    (lambda p: _edit(p, lambda o: o.update(rows=6000)),
     "the shards hold 6001 rows, rows says 6000"),
    (lambda p: _edit(p, lambda o: o["shards"][1].pop("path")),
     r"shards\[1\] must be an object with a 'path'"),
    (lambda p: (p.parent / "shard-00003.npy").unlink(),
     r"shards\[3\]: shard .*shard-00003.npy: no such file"),
    (lambda p: np.save(p.parent / "shard-00001.npy",
                       np.zeros((1500, DIM), np.float64)),
     r"shards\[1\]: .* must hold 2-D C-order float32 rows, got float64"),
    (lambda p: np.save(p.parent / "shard-00001.npy",
                       np.zeros((1499, DIM), np.float32)),
     r"shape \(1499, 64\), the manifest says \(1500, 64\)"),
    (lambda p: (p.parent / "shard-00000.npy").write_bytes(b"garbage"),
     r"shards\[0\]: shard .* not a .npy file"),
], ids=["not-json", "not-object", "missing", "version", "dtype", "dim",
        "dim-bool", "no-shards", "offset-gap", "rows", "no-path",
        "missing-shard", "shard-dtype", "shard-shape", "not-npy"])
def test_bad_manifest_or_shard_is_a_clear_error(data, tmp_path, mutate,
                                                match):
    path = _copy_data(data, tmp_path / "copy")
    mutate(path)
    with pytest.raises(sh.ManifestError, match=match) as info:
        sh.load_manifest(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_drivers_refuse_a_bad_manifest_before_queueing(data, tmp_path):
    # No broker runs for this test: a driver that queued anything would
    # fail differently (a connection error), not with ManifestError.
    import celery_driver
    path = _copy_data(data, tmp_path / "copy")
    (path.parent / "shard-00002.npy").unlink()
    with pytest.raises(sh.ManifestError, match="shard-00002.npy: no such"):
        celery_driver.normalize_all(path, tmp_path / "out", progress=False)
    with pytest.raises(sh.ManifestError, match="shard-00002.npy"):
        celery_driver.search(path, _queries(1), k=3)
    assert not (tmp_path / "out").exists()
    assert celery_driver.main(["search", str(path)]) == 2


# ---- exactness of the merge ----------------------------------------------


def _split_search(m, queries, k, normalized=False):
    parts = [sh.search_array(sh.open_shard(s.path), queries, k, s.offset,
                             normalized) for s in m.shards]
    return sh.merge_top_k(parts, k)


@pytest.mark.parametrize("k", [1, 10, 1501, 1600, ROWS])
def test_merged_top_k_equals_one_top_k_over_the_concatenation(data, k):
    q = _queries(5)
    scores, ids = _split_search(data, q, k)
    ref_scores, ref_ids = offloop.blocking.top_k(q, _concat(data), k=k)
    assert np.array_equal(ids, ref_ids)
    assert np.array_equal(scores, ref_scores)


def test_merge_orders_ties_and_nan_as_top_k_does(tmp_path):
    # The same rows in every shard (ties across shards: the lower global id
    # wins) and NaN rows (after every number, lower id first).
    rng = np.random.default_rng(11)
    block = rng.standard_normal((40, 8), dtype=np.float32)
    block[5] = np.nan
    block[17] = block[3]
    infos = []
    for s in range(3):
        np.save(tmp_path / f"s{s}.npy", block)
        infos.append(sh.ShardInfo(str(tmp_path / f"s{s}.npy"), 40, 40 * s))
    m = sh.Manifest(str(tmp_path / "manifest.json"), 8, 120, False,
                    tuple(infos))
    sh.write_manifest(m)
    m = sh.load_manifest(m.path)
    q = np.vstack([block[3], rng.standard_normal(8, dtype=np.float32)])
    whole = np.concatenate([block] * 3)
    for k in (1, 4, 7, 60, 120):
        got = _split_search(m, q, k)
        ref = offloop.blocking.top_k(q, whole, k=k)
        assert np.array_equal(got[1], ref[1]), k
        assert np.array_equal(got[0], ref[0], equal_nan=True), k
    # The best of query 0: row 3 and its copy 17, in every shard, in order.
    assert got[1][0][:6].tolist() == [3, 17, 43, 57, 83, 97]


def test_search_array_takes_unaligned_queries(data):
    # Dask hands a task its numpy arguments as views into a message frame,
    # at any byte offset (found by UBSan in a worker: a misaligned float
    # load in offloop's kernel); search_array aligns them first.
    q = _queries(2)
    raw = np.zeros(q.nbytes + 1, np.uint8)
    odd = raw[1:].view(np.float32).reshape(q.shape)
    odd[...] = q
    assert not odd.flags.aligned
    m = sh.open_shard(data.shards[0].path)
    got = sh.search_array(m, odd, 5)
    ref = sh.search_array(m, q, 5)
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])


@pytest.mark.parametrize("query, k, exc, match", [
    (np.ones(DIM + 1, np.float32), 3, ValueError, "query must be 64 floats"),
    (np.ones((0, DIM), np.float32), 3, ValueError, "query must be"),
    (np.ones(DIM, np.float32), 0, ValueError, "k must be between 1 and"),
    (np.ones(DIM, np.float32), ROWS + 1, ValueError, "k must be between"),
    (np.ones(DIM, np.float32), True, TypeError, "k must be an int, not bool"),
    (np.ones(DIM, np.float32), 2.0, TypeError, "k must be an int, not float"),
])
def test_bad_query_or_k_raises_at_the_call(data, query, k, exc, match):
    import celery_driver
    # No broker: the error must come before anything is queued.
    with pytest.raises(exc, match=match):
        celery_driver.search(data, query, k)


def test_k_accepts_numpy_integers(data):
    q = _queries(1)
    assert np.array_equal(_split_search(data, q, np.int64(5))[1],
                          offloop.blocking.top_k(q, _concat(data), k=5)[1])


# ---- atomic writes ---------------------------------------------------------


def _final_and_temps(out):
    out = pathlib.Path(out)
    return out.exists(), sorted(p.name for p in out.parent.glob(
        f".{out.name}.*.tmp"))


def test_normalize_file_is_atomic_and_a_killed_writer_leaves_no_shard(
        data, tmp_path):
    src = data.shards[1].path
    out = tmp_path / "out" / "shard-00001.npy"
    out.parent.mkdir()
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "arm-shard-00001.npy").touch()
    code = ("import sys, shards; "
            "shards.normalize_file(sys.argv[1], sys.argv[2], chunk_rows=500)")
    proc = _start([sys.executable, "-c", code, src, str(out)],
                  tmp_path / "writer.log",
                  env=_service_env(**{HOLD_ENV: str(hold)}))
    try:
        pid = _held_pid(hold, "shard-00001.npy")
        assert pid == proc.pid
        # One chunk of three written, flushed; nothing under the final name.
        exists, temps = _final_and_temps(out)
        assert not exists
        host = socket.gethostname()
        assert temps == [f".shard-00001.npy.{host}.{pid}.tmp"]
        part = np.load(out.parent / temps[0], mmap_mode="r")
        assert part.shape == (1500, DIM)
        assert np.array_equal(part[:500],
                              offloop.blocking.batch_normalize(
                                  sh.open_shard(src)[:500]))
        assert not part[1000:].any()  # the rest never written
        del part
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(DEADLINE) == -signal.SIGKILL
    finally:
        _stop(proc)
    assert _final_and_temps(out) == (False, temps)
    # The rerun removes the dead writer's temporary and writes the shard.
    done = sh.normalize_file(src, out)
    assert done == {"rows": 1500, "jobs": 1, "written": True}
    assert _final_and_temps(out) == (True, [])
    assert np.array_equal(np.load(out), offloop.blocking.batch_normalize(
        sh.open_shard(src)))


def test_normalize_file_keeps_a_complete_output_and_removes_on_error(
        data, tmp_path, monkeypatch):
    src = data.shards[0].path
    out = tmp_path / "n.npy"
    assert sh.normalize_file(src, out)["written"] is True
    before = out.stat().st_mtime_ns
    assert sh.normalize_file(src, out) == {"rows": 1501, "jobs": 0,
                                           "written": False}
    assert out.stat().st_mtime_ns == before
    # An error mid-write (here: in the second chunk) leaves no temporary
    # and no output.
    real = offloop.blocking.batch_normalize
    calls = []

    def failing(x, out=None):
        calls.append(len(x))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(x, out=out)

    monkeypatch.setattr(offloop.blocking, "batch_normalize", failing)
    with pytest.raises(OSError, match="No space left"):
        sh.normalize_file(src, tmp_path / "never.npy", chunk_rows=500)
    assert calls == [500, 500]
    assert not list(tmp_path.glob("*never*"))
    # A live writer's temporary is never removed by another writer.
    live = tmp_path / f".n2.npy.{socket.gethostname()}.{os.getpid()}.tmp"
    live.write_bytes(b"x")
    sh.remove_stale_temps(tmp_path / "n2.npy")
    assert live.exists()


# ---- Celery ----------------------------------------------------------------


def _need_redis():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH: the Celery tests need a "
                    "real broker (apt-get install redis-server; .ci/run "
                    "installs it)")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    _need_redis()
    import redis
    d = tmp_path_factory.mktemp("redis")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = _start(["redis-server", "--port", str(port), "--bind",
                   "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(d)], d / "redis.log", env=env, cwd=d)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)

    def ping():
        assert proc.poll() is None, _tail(d / "redis.log")
        with contextlib.suppress(redis.ConnectionError):
            return client.ping()

    try:
        _until(ping, "redis-server to answer PING")
        yield url
    finally:
        client.close()
        _stop(proc)


@pytest.fixture(scope="module")
def celery_mod(redis_url):
    """celery_app and celery_driver, pointed at the test's Redis."""
    os.environ["OFFLOOP_REDIS_URL"] = redis_url
    import celery_app
    import celery_driver
    celery_app.app.conf.update(broker_url=redis_url,
                               result_backend=redis_url)
    yield celery_app, celery_driver
    os.environ.pop("OFFLOOP_REDIS_URL", None)


class Worker:
    def __init__(self, proc, log, hold):
        self.proc, self.log, self.hold = proc, log, hold


@contextlib.contextmanager
def _celery_worker(celery_mod, redis_url, tmp, queue=None):
    celery_app, _ = celery_mod
    hold = tmp / "hold"
    hold.mkdir()
    name = f"w{_free_port()}@127.0.0.1"
    log = tmp / "worker.log"
    proc = _start([sys.executable, "-m", "celery", "-A", "celery_app",
                   "worker", "--pool", "prefork", "--concurrency", "2",
                   "--loglevel", "info", "--without-mingle",
                   "--without-gossip", "--hostname", name,
                   *(["--queues", queue] if queue else [])],
                  log, env=_service_env(OFFLOOP_REDIS_URL=redis_url,
                                        **{HOLD_ENV: str(hold)}),
                  cwd=PIPE)

    def ping():
        assert proc.poll() is None, _tail(log)
        return celery_app.app.control.ping([name], timeout=0.5)

    try:
        _until(ping, "the celery worker to answer ping")
        yield Worker(proc, log, hold)
    except BaseException:
        print(_tail(log, 80))
        raise
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def celery_worker(celery_mod, redis_url, tmp_path_factory):
    with _celery_worker(celery_mod, redis_url,
                        tmp_path_factory.mktemp("celery")) as w:
        yield w


def _check_normalized(manifest, src_manifest):
    for s, src in zip(manifest.shards, src_manifest.shards):
        want = offloop.blocking.batch_normalize(sh.open_shard(src.path))
        assert np.array_equal(sh.open_shard(s.path), want), s.path


def _out_listing(out):
    return sorted(p.name for p in pathlib.Path(out).iterdir())


EXPECTED_OUT = ["manifest.json"] + [f"shard-{s:05d}.npy"
                                    for s in range(SHARDS)]


def test_celery_pipeline_normalizes_each_shard_once_and_search_is_exact(
        data, celery_mod, celery_worker, tmp_path):
    _, driver = celery_mod
    new, results = driver.normalize_all(data.path, tmp_path / "out",
                                        timeout=DEADLINE, progress=False)
    assert [r["path"] for r in results] == [s.path for s in data.shards]
    assert all(r["written"] for r in results)
    assert _out_listing(tmp_path / "out") == EXPECTED_OUT
    assert new.normalized and sh.load_manifest(new.path) == new
    _check_normalized(new, data)
    # Again: every output is already there; nothing is rewritten.
    again, results = driver.normalize_all(data.path, tmp_path / "out",
                                          timeout=DEADLINE, progress=False)
    assert not any(r["written"] for r in results) and again == new

    q = _queries(3)
    whole = _concat(new)
    for k in (1, 10, 1600):
        scores, ids = driver.search(new, q, k, timeout=DEADLINE)
        ref_scores, ref_ids = offloop.blocking.top_k(q, whole, k=k,
                                                     normalized=True)
        assert np.array_equal(ids, ref_ids), k
        assert np.array_equal(scores, ref_scores), k
    one = driver.search(new.path, q[0], 5, timeout=DEADLINE)
    assert one[1].shape == (1, 5) and np.array_equal(one[1][0], ref_ids[0,
                                                                        :5])


def test_celery_child_killed_mid_task_loses_nothing(
        data, celery_mod, celery_worker, tmp_path):
    _, driver = celery_mod
    tag = "shard-00002.npy"
    (celery_worker.hold / f"arm-{tag}").touch()
    out = tmp_path / "out"
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        run = ex.submit(driver.normalize_all, data.path, out,
                        timeout=DEADLINE, progress=False)
        pid = _held_pid(celery_worker.hold, tag)
        # A prefork child of our worker, held half-way: a temporary holds
        # the first chunk, the final name does not exist.
        with open(f"/proc/{pid}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == \
                celery_worker.proc.pid
        exists, temps = _final_and_temps(out / tag)
        assert not exists and len(temps) == 1 and str(pid) in temps[0]
        os.kill(pid, signal.SIGKILL)
        new, results = run.result(DEADLINE)
    assert _out_listing(out) == EXPECTED_OUT  # nothing twice, no temps
    _check_normalized(new, data)
    assert [r["written"] for r in results] == [True] * SHARDS
    rerun = results[2]
    assert rerun["pid"] != pid and rerun["ppid"] == celery_worker.proc.pid
    assert rerun["redelivered"]


def test_celery_prefork_children_get_a_fresh_offloop_pool(
        data, celery_mod, redis_url, tmp_path):
    # A worker of its own, on a queue of its own: its children ran nothing
    # but this test's tasks.
    _, driver = celery_mod
    queue = f"fork-{os.getpid()}"
    with _celery_worker(celery_mod, redis_url, tmp_path, queue) as worker:
        new, results = driver.normalize_all(data.path, tmp_path / "out",
                                            timeout=DEADLINE,
                                            progress=False, queue=queue)
    _check_normalized(new, data)
    main = worker.proc.pid
    parent = results[0]["parent"]
    # The parent's pool was running when it forked its children.
    assert parent["pid"] == main
    assert parent["stats"]["threads_alive"] == parent["stats"]["threads"] > 0
    assert parent["stats"]["submitted"] >= 1
    by_child = {}
    for r in results:
        assert r["pid"] != main and r["ppid"] == main
        assert r["parent"] == parent  # inherited at fork, unchanged
        assert r["jobs"] == 1
        by_child.setdefault(r["pid"], []).append(r)
    for pid, rs in by_child.items():
        last = max(rs, key=lambda r: r["stats"]["submitted"])["stats"]
        # The child's counters: the parent's at fork plus its own jobs,
        # each started and completed on the child's own threads.
        mine = sum(r["jobs"] for r in rs)
        for key in ("submitted", "started", "completed"):
            assert last[key] - parent["stats"][key] == mine, (pid, key)
        assert last["failed"] == parent["stats"]["failed"]
        assert last["threads_alive"] == last["threads"] > 0
        assert last["queued"] == 0


def test_celery_task_errors_reach_the_driver_unretried(
        data, celery_mod, celery_worker, tmp_path):
    celery_app, _ = celery_mod
    r = celery_app.normalize_shard.delay(str(tmp_path / "gone.npy"),
                                         str(tmp_path / "o.npy"))
    with pytest.raises(FileNotFoundError, match="gone.npy: no such file"):
        r.get(timeout=DEADLINE)
    assert r.info.__class__ is FileNotFoundError
    r = celery_app.search_shard.delay(data.shards[0].path, [1.0, 2.0], 3)
    with pytest.raises(ValueError, match="query must be 64 floats"):
        r.get(timeout=DEADLINE)
    report = celery_app.pool_report.delay().get(timeout=DEADLINE)
    assert report["ppid"] == celery_worker.proc.pid


# ---- Dask ------------------------------------------------------------------


class Cluster:
    def __init__(self, address, scheduler, workers, client, log_dir):
        self.address, self.scheduler = address, scheduler
        self.workers, self.client, self.log_dir = workers, client, log_dir


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    from distributed import Client
    d = tmp_path_factory.mktemp("dask")
    hold = d / "hold"
    hold.mkdir()
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = _service_env(**{HOLD_ENV: str(hold)})
    procs = []
    try:
        scheduler = _start([sys.executable, "-m", "dask", "scheduler",
                            "--host", "127.0.0.1", "--port", str(port),
                            "--no-dashboard"], d / "scheduler.log", env=env,
                           cwd=PIPE)
        procs.append(scheduler)
        workers = []
        for n in range(3):
            w = _start([sys.executable, "-m", "dask", "worker", address,
                        "--no-nanny", "--nthreads", "1", "--memory-limit",
                        "0", "--host", "127.0.0.1", "--no-dashboard",
                        "--name", f"w{n}", "--local-directory",
                        str(d / f"w{n}")], d / f"worker{n}.log", env=env,
                       cwd=PIPE)
            procs.append(w)
            workers.append(w)
        client = Client(address, timeout=DEADLINE)
        try:
            client.wait_for_workers(3, timeout=DEADLINE)
            c = Cluster(address, scheduler, workers, client, d)
            c.hold = hold
            yield c
        finally:
            client.close()
    finally:
        for p in procs:  # all at once: each takes a moment to close
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            _stop(p)


@pytest.fixture(scope="module")
def normalized(data, tmp_path_factory):
    """The data set normalized in this process (the Dask tests search it)."""
    out = tmp_path_factory.mktemp("norm")
    infos = []
    for s in data.shards:
        o = out / pathlib.Path(s.path).name
        sh.normalize_file(s.path, o)
        infos.append(sh.ShardInfo(str(o), s.rows, s.offset))
    m = sh.Manifest(str(out / "manifest.json"), DIM, ROWS, True,
                    tuple(infos))
    sh.write_manifest(m)
    return sh.load_manifest(m.path)


def test_dask_search_is_exact_and_shards_stay_loaded(normalized,
                                                     dask_cluster):
    import dask_search
    client = dask_cluster.client
    shards = dask_search.ShardSet.start(client, normalized)
    try:
        q = _queries(4, seed=9)
        whole = _concat(normalized)
        for k in (1, 10, 1600):
            scores, ids = shards.search(q, k, timeout=DEADLINE)
            ref = offloop.blocking.top_k(q, whole, k=k, normalized=True)
            assert np.array_equal(ids, ref[1]), k
            assert np.array_equal(scores, ref[0]), k
        # Each shard stays loaded: no worker mapped one twice over the
        # queries (a worker that got a copy from work stealing mapped it
        # once), and the shards are spread over the workers.
        maps = client.run(dask_search.mapped_counts)
        paths = {s.path for s in normalized.shards}
        assert {p for m in maps.values() for p in m} == paths, maps
        assert all(n == 1 for m in maps.values() for p, n in m.items()
                   if p in paths), maps
        where = client.who_has(shards.futures)
        assert len({w[0] for w in where.values()}) > 1, where
        worker_pids = {p.pid for p in dask_cluster.workers}
        assert shards.last_pids <= worker_pids
        with pytest.raises(ValueError, match="query must be 64 floats"):
            shards.search([1.0, 2.0], 3)
        with pytest.raises(ValueError, match="k must be between"):
            shards.search(q, ROWS + 1)
    finally:
        shards.close()


async def test_cluster_app_awaits_the_cluster(loop, normalized,
                                              dask_cluster):
    httpx = pytest.importorskip("httpx")
    import cluster_app
    app = cluster_app.create_app(dask_cluster.address, normalized.path)
    q = _queries(2, seed=5)
    ref = offloop.blocking.top_k(q, _concat(normalized), k=7,
                                 normalized=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://test") as c:
            r = await c.post("/search", json={"query": q[0].tolist(),
                                              "k": 7})
            assert r.status_code == 200, r.text
            got = r.json()["results"]
            # One query takes top_k's one-query path, whose scores may
            # differ from the batched path's in the last bits: compare like
            # with like.
            one = offloop.blocking.top_k(q[0], _concat(normalized), k=7,
                                         normalized=True)
            assert [g["index"] for g in got] == one[1].tolist()
            assert [g["score"] for g in got] == one[0].tolist()
            r = await c.post("/search", json={"query": q.tolist(), "k": 7})
            rows = r.json()["results"]
            assert [[g["index"] for g in row] for row in rows] == \
                ref[1].tolist()
            assert [[g["score"] for g in row] for row in rows] == \
                ref[0].tolist()
            r = await c.post("/search", json={"query": [1.0], "k": 7})
            assert r.status_code == 422 and "64 floats" in r.text
            r = await c.post("/search", json={"query": q[0].tolist(),
                                              "k": ROWS + 1})
            assert r.status_code == 422 and "k must be between" in r.text
            r = await c.post("/search", json={"k": 3})
            assert r.status_code == 422
            health = (await c.get("/health")).json()
            assert health == {"status": "ok", "workers": 3, "shards": SHARDS,
                              "rows": ROWS}


def test_dask_worker_killed_mid_query_answer_still_exact(normalized,
                                                        dask_cluster):
    # Last of the Dask tests: it leaves two of the three workers.
    import dask_search
    shards = dask_search.ShardSet.start(dask_cluster.client, normalized)
    tag = "search-shard-00001.npy"
    (dask_cluster.hold / f"arm-{tag}").touch()
    q = _queries(3, seed=4)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            run = ex.submit(shards.search, q, 10, DEADLINE)
            pid = _held_pid(dask_cluster.hold, tag)
            assert pid in {p.pid for p in dask_cluster.workers}
            os.kill(pid, signal.SIGKILL)
            scores, ids = run.result(DEADLINE)
        ref = offloop.blocking.top_k(q, _concat(normalized), k=10,
                                     normalized=True)
        assert np.array_equal(ids, ref[1])
        assert np.array_equal(scores, ref[0])
        assert pid not in shards.last_pids
        dask_cluster.client.wait_for_workers(2, timeout=DEADLINE)
        assert len(dask_cluster.client.nthreads()) == 2
    finally:
        shards.close()
