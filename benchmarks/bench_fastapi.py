"""FastAPI under load: numpy in the endpoint vs offloop.top_k.

uvicorn serves examples/fastapi_app.py (plus three extra routes) in a
subprocess on 127.0.0.1, once per event loop (asyncio, then uvloop), with
httptools as its HTTP parser when installed.  A load generator keeps a
fixed number of POST /search requests in flight for a fixed time against
each variant in turn; what people write today is the baseline:

  (a) sync        numpy top-k (``m @ q``, ``argpartition``, sort of the k
                  best) called inside ``async def``: the loop thread waits
                  for every search (the stall);
  (b) threadpool  the same numpy function through ``run_in_threadpool``
                  (anyio's 40-thread limiter), FastAPI's usual advice;
  (c) offloop     ``await offloop.top_k(q, m, k, normalized=True)``: the
                  loop never waits, the kernel is offloop's.

and four extra rows.  ``offloop-uncoalesced``: (c) with
``offloop.configure(max_batch=1)`` in the server, every request scanning
the matrix alone (offloop before coalescing).
``threadpool+offloop-kernel``: offloop.blocking.top_k through
``run_in_threadpool``, offloop's kernel behind the thread-pool bridge;
(c) against it is the bridge alone, (b) against it the kernel alone.
``framework-ceiling``: the same endpoint with no native work and no wait,
the most requests/s this app, server, load generator and prober reach
here.  ``no-native-work``: the same endpoint with an ``await
asyncio.sleep`` of (c)'s median latency in place of the kernel, so that
requests arrive at (c)'s rate with no native work at all: the /health
tail that FastAPI's own per-request work on that event loop gives on this
machine.  The matrix is 100,000 x 384 float32 unit rows (seeded), top-10.

The load generator is wrk (Debian's ``wrk``; installed with apt-get when
missing and run as root, else the Python client below), one thread, 16
connections, a Lua script that rotates through 32 pre-generated JSON
bodies.  Meanwhile a prober in this process, on its own connection, sends
GET /health every 2 ms and records its latency: the loop's responsiveness
under load.

It prints requests/s, p50/p99 request latency and /health p99 per variant,
the goals with PASS/MISS, writes a CSV to benchmarks/results/ and a chart
(PNG, matplotlib) to docs/bench_fastapi.png.

    python benchmarks/bench_fastapi.py [--quick] [--duration 10]
        [--concurrency 16] [--body query|like] [--client auto|wrk|python]
        [--loops asyncio,uvloop] [--http h11|httptools]
"""

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from _common import (
    LOOPS,
    Recorder,
    git_commit,
    percentile,
    steal_pct,
    steal_ticks,
    verdict,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
VARIANTS = [("sync", "/search-sync"),
            ("threadpool", "/search-threadpool"),
            ("offloop", "/search"),
            ("threadpool+offloop-kernel", "/search-threadpool-offloop"),
            ("offloop-uncoalesced", "/search")]
# Variants served with offloop.configure(max_batch=1) in the server.
UNCOALESCED = {"offloop-uncoalesced"}
NO_WORK = "no-native-work"  # after the variants, at (c)'s latency
# The same endpoint with no wait at all: the most requests/s the app,
# uvicorn, the load generator and the prober reach on this machine.
CEILING = "framework-ceiling"
HEALTH_PERIOD = 0.002  # seconds between /health probes
START_DEADLINE = 120   # seconds for the server to answer /health
DIM = 384
K = 10
N_BODIES = 32
GOAL_RPS = 4.0         # (c) requests/s over (b), with coalescing
GOAL_NO_WORK_MS = 0.5  # (c) /health p99 over no-native-work's, at most
GOAL_HEALTH_MS = 2.0   # (c) /health p99 under load
GOAL_STALL = 10.0      # (a) /health p99 over (c)'s: the stall is visible


# ---- server -----------------------------------------------------------


def numpy_top_k(q, m, k):
    """Top-k of unit rows m by cosine with q, best first: the status quo.

    What an endpoint does today without offloop: one matrix-vector product
    (OpenBLAS), ``argpartition`` for the k best, a sort of those k.
    """
    import numpy

    q = numpy.asarray(q, dtype=numpy.float32)
    q = q / numpy.linalg.norm(q)
    scores = m @ q
    idx = numpy.argpartition(-scores, k - 1)[:k]
    idx = idx[numpy.argsort(-scores[idx], kind="stable")]
    return scores[idx], idx


def serve(port, rows, threads, loop, http):
    """Run the example app plus the comparison routes (subprocess)."""
    sys.path.insert(0, str(ROOT / "examples"))
    import numpy
    import uvicorn
    from fastapi import Request
    from fastapi.concurrency import run_in_threadpool

    import fastapi_app
    import offloop

    if threads:
        offloop.configure(threads=threads)

    app = fastapi_app.create_app(rows=rows)

    no_work_result = (numpy.zeros(K, numpy.float32), numpy.arange(K))

    def query_of(body, request):
        m = request.app.state.matrix
        return (m[body.like] if body.like is not None else body.query), m

    results = fastapi_app.SearchResults.of  # the app's own response model

    @app.post("/search-sync")
    async def search_sync(body: fastapi_app.Query,
                          request: Request) -> fastapi_app.SearchResults:
        q, m = query_of(body, request)
        return results(*numpy_top_k(q, m, body.k))

    @app.post("/search-threadpool")
    async def search_threadpool(body: fastapi_app.Query,
                                request: Request) -> fastapi_app.SearchResults:
        q, m = query_of(body, request)
        return results(*await run_in_threadpool(numpy_top_k, q, m, body.k))

    @app.post("/search-threadpool-offloop")
    async def search_threadpool_offloop(
            body: fastapi_app.Query,
            request: Request) -> fastapi_app.SearchResults:
        q, m = query_of(body, request)
        return results(*await run_in_threadpool(
            offloop.blocking.top_k, q, m, k=body.k, normalized=True))

    @app.post("/bench-configure")
    async def bench_configure(max_batch: int) -> dict:
        """Switch coalescing between variants (this benchmark only)."""
        offloop.configure(threads=threads or None, max_batch=max_batch)
        return {"max_batch": offloop.stats()["max_batch"]}

    @app.post("/search-no-work")
    async def search_no_work(body: fastapi_app.Query, request: Request,
                             wait_ms: float = 0.0
                             ) -> fastapi_app.SearchResults:
        """The endpoint's own cost: no native work, a timer instead."""
        query_of(body, request)
        await asyncio.sleep(wait_ms / 1e3)
        return results(*no_work_result)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning",
                loop=loop, http=http, access_log=False)


# ---- bodies -----------------------------------------------------------


def make_bodies(form, rows):
    """N_BODIES JSON bodies: 384 random floats each, or ``{"like": i}``."""
    import numpy

    rng = numpy.random.default_rng(7)
    if form == "like":
        return [json.dumps({"like": int(i), "k": K})
                for i in rng.integers(0, rows, N_BODIES)]
    return [json.dumps({"query": [round(float(x), 5)
                                  for x in rng.standard_normal(DIM)],
                        "k": K}) for _ in range(N_BODIES)]


# ---- Python client (fallback load generator, and the /health prober) ---


def request_bytes(method, path, body=None):
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body is None:
        return (head + "\r\n").encode()
    data = body.encode()
    return (head + "Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def roundtrip(reader, writer, payload):
    """Send one request, read one response; return (status, body)."""
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def worker(port, payloads, stop_at, latencies, errors, offset):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            status, _ = await roundtrip(reader, writer,
                                        payloads[i % len(payloads)])
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors.append(status)
            i += 1
    finally:
        writer.close()


async def prober(port, stop, latencies):
    """GET /health every HEALTH_PERIOD until ``stop`` is set."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = request_bytes("GET", "/health")
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            await roundtrip(reader, writer, payload)
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(HEALTH_PERIOD)
    finally:
        writer.close()


async def probe_idle(port, duration):
    """The prober alone: /health latency with no load."""
    health = []
    stop = asyncio.Event()
    task = asyncio.ensure_future(prober(port, stop, health))
    await asyncio.sleep(duration)
    stop.set()
    await task
    return health


async def load_python(port, path, bodies, concurrency, duration):
    """Fixed concurrency for a fixed time with asyncio clients."""
    payloads = [request_bytes("POST", path, b) for b in bodies]
    lat, health, errors = [], [], []
    stop = asyncio.Event()
    probe = asyncio.ensure_future(prober(port, stop, health))
    stop_at = time.perf_counter() + duration
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(port, payloads, stop_at, lat, errors, i)
                           for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    stop.set()
    await probe
    return {"rps": len(lat) / elapsed,
            "p50_ms": percentile(lat, 50) * 1e3,
            "p99_ms": percentile(lat, 99) * 1e3, "requests": len(lat),
            "errors": len(errors)}, health


# ---- wrk --------------------------------------------------------------


def ensure_wrk():
    """wrk's path; apt-get installs it when missing and run as root."""
    path = shutil.which("wrk")
    if path or os.geteuid() != 0 or not shutil.which("apt-get"):
        return path
    print("# wrk is missing: apt-get install -y wrk", flush=True)
    try:
        subprocess.run(["apt-get", "install", "-y", "wrk"], timeout=300,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    except (OSError, subprocess.TimeoutExpired):
        pass
    return shutil.which("wrk")


def wrk_script(bodies):
    """A Lua script that POSTs the bodies in turn (one wrk thread)."""
    lines = ['wrk.method = "POST"',
             'wrk.headers["Content-Type"] = "application/json"',
             "local bodies = {"]
    lines += [f"  [==[{b}]==]," for b in bodies]
    lines += ["}", "local i = 0",
              "request = function()",
              "  i = i + 1",
              "  return wrk.format(nil, nil, nil, bodies[i % #bodies + 1])",
              "end", ""]
    return "\n".join(lines)


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(out):
    """requests/s, p50/p99 (ms) and errors from ``wrk --latency``."""
    def one(pattern):
        m = re.search(pattern, out, re.M)
        if not m:
            raise RuntimeError(f"cannot parse wrk's output:\n{out}")
        return m

    def ms(q):
        m = one(rf"^\s+{q}%\s+([\d.]+)(us|ms|s|m)\s*$")
        return float(m.group(1)) * UNITS[m.group(2)]

    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                  r"timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return {"rps": float(one(r"Requests/sec:\s+([\d.]+)").group(1)),
            "p50_ms": ms(50), "p99_ms": ms(99),
            "requests": int(one(r"(\d+) requests in").group(1)),
            "errors": errors}


async def load_wrk(wrk, lua, port, path, concurrency, duration, probe=True):
    """wrk for ``duration`` s, the /health prober beside it."""
    health = []
    stop = asyncio.Event()
    task = (asyncio.ensure_future(prober(port, stop, health))
            if probe else None)
    proc = await asyncio.create_subprocess_exec(
        wrk, "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency",
        "--timeout", "10s", "-s", lua, f"http://127.0.0.1:{port}{path}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), duration + 30)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    finally:
        stop.set()
        if task:
            await task
    if proc.returncode:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode()}")
    return parse_wrk(out.decode()), health


# ---- helpers ----------------------------------------------------------


def post(port, path, body):
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await roundtrip(reader, writer,
                                   request_bytes("POST", path, body))
        finally:
            writer.close()
    status, data = asyncio.run(go())
    if status != 200:
        raise SystemExit(f"POST {path}: HTTP {status}: {data[:300]!r}")
    return [r["index"] for r in json.loads(data)["results"]]


def post_empty(port, path):
    """POST with an empty JSON body; raises on anything but 200."""
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await roundtrip(reader, writer,
                                   request_bytes("POST", path))
        finally:
            writer.close()
    status, data = asyncio.run(go())
    if status != 200:
        raise SystemExit(f"POST {path}: HTTP {status}: {data[:300]!r}")


def wait_ready(port, proc):
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited early")
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as s:
                s.sendall(request_bytes("GET", "/health"))
                if b" 200 " in s.recv(1024):
                    return
        except OSError:
            pass
        time.sleep(0.1)  # polling a subprocess, bounded by the deadline
    raise SystemExit("the server did not answer /health in time")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chart(rows, path, title):
    """One row of three bar charts per event loop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loops = list(dict.fromkeys(r["loop"] for r in rows))
    colors = ["#c0504d", "#9bbb59", "#4f81bd", "#b3b3b3", "#8fb3e0",
              "#f2f2f2", "#e6e6e6"]
    fig, axes = plt.subplots(len(loops), 3, figsize=(12, 4 * len(loops)),
                             squeeze=False)
    for loop, row_axes in zip(loops, axes):
        mine = [r for r in rows if r["loop"] == loop]
        names = [r["variant"].replace("+", "+\n")
                 .replace("-native-", " native\n") for r in mine]
        for ax, key, label in zip(
                row_axes, ["rps", "p99_ms", "health_p99_ms"],
                ["POST /search requests/s (higher is better)",
                 "POST /search p99 latency, ms (lower)",
                 "GET /health p99 under load, ms (log; lower)"]):
            bars = ax.bar(names, [r[key] for r in mine],
                          color=colors[:len(mine)])
            ax.set_title(f"{loop}: {label}", fontsize=10)
            ax.bar_label(bars, fmt="%.1f", fontsize=9)
            ax.tick_params(axis="x", labelsize=8)
            ax.spines[["top", "right"]].set_visible(False)
        # The tails span 1 to 300 ms: a log scale keeps the small bars
        # readable next to the stall, and the goal line visible.
        row_axes[2].set_yscale("log")
        row_axes[2].set_ylim(bottom=0.5)
        row_axes[2].axhline(GOAL_HEALTH_MS, color="black", lw=0.8, ls="--",
                            label=f"goal: {GOAL_HEALTH_MS:g} ms")
        row_axes[2].legend(fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_http():
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds of load per variant (default 10)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of unrecorded load first (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="4 s per variant, 1 s warm-up")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--body", choices=["query", "like"], default="query",
                        help="JSON body: 384 floats (default), or "
                             '{"like": i} (row i as the query)')
    parser.add_argument("--client", choices=["auto", "wrk", "python"],
                        default="auto", help="load generator (auto: wrk "
                        "when present or installable, else python)")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="OPENBLAS_NUM_THREADS in the server (default "
                             "1; 0: the library's default, one per CPU)")
    parser.add_argument("--threads", type=int, default=0,
                        help="offloop.configure(threads=N) in the server "
                             "(default 0: one per CPU); 1 leaves a core "
                             "to the loop on 2 CPUs")
    parser.add_argument("--loops", default="asyncio,uvloop",
                        help="comma-separated event loops of the server, "
                             "each its own run (default asyncio,uvloop)")
    parser.add_argument("--http", choices=["h11", "httptools"],
                        default=default_http(),
                        help="the server's HTTP parser (default: "
                             "httptools when installed, as uvicorn picks)")
    parser.add_argument("--loop", help=argparse.SUPPRESS)  # with --serve
    parser.add_argument("--chart", default=str(ROOT / "docs" /
                                               "bench_fastapi.png"))
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--serve", type=int, metavar="PORT",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.rows, args.threads, args.loop,
                     args.http)
    if args.quick:
        args.duration, args.warmup = 4, 1
    for loop in args.loops.split(","):
        if loop not in LOOPS:
            parser.error(f"--loops: unknown event loop {loop!r} "
                         "(asyncio, uvloop)")

    wrk = None if args.client == "python" else ensure_wrk()
    if args.client == "wrk" and not wrk:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    bodies = make_bodies(args.body, args.rows)
    lua = None
    if wrk:
        fd, lua = tempfile.mkstemp(prefix="bench_fastapi-", suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(wrk_script(bodies))
        client = (subprocess.run([wrk, "-v"], capture_output=True,
                                 text=True).stdout.split(" [")[0]
                  or "wrk") + ", 1 thread"
    else:
        client = "Python asyncio client" + (
            "" if args.client == "python" else " (wrk not found)")

    env = dict(os.environ)
    if args.blas_threads:
        env["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)
    else:
        env.pop("OPENBLAS_NUM_THREADS", None)
    blas = env.get("OPENBLAS_NUM_THREADS", f"default ({os.cpu_count()})")
    load1, load5, _ = os.getloadavg()
    commit = git_commit()
    print(f"# bench_fastapi: {platform.machine()}, {os.cpu_count()} CPUs,"
          f" Python {platform.python_version()}, commit {commit}, "
          f"load average {load1:.2f} / {load5:.2f} (1 / 5 min)")
    body_desc = ("384 floats in JSON (~3.6 kB)" if args.body == "query" else
                 '{"like": i}: row i of the matrix as the query')
    print(f"# {args.rows:,} x {DIM} float32 unit rows, top-{K}; "
          f"{args.concurrency} connections, {args.duration} s per "
          f"variant after {args.warmup} s warm-up; load: {client}; "
          f"body: {body_desc}, {N_BODIES} rotated; GET /health every "
          f"{HEALTH_PERIOD * 1e3:g} ms from this process; "
          f"server: uvicorn, HTTP parser {args.http}, OpenBLAS threads "
          f"{blas}, offloop threads "
          f"{args.threads or f'{os.cpu_count()} (default)'}, worker priority "
          f"{env.get('OFFLOOP_WORKER_PRIORITY', 'default (normal policy, long slice)')}")
    print("# steal: the share of CPU time the host took from this VM "
          "during the run (/proc/stat); tails grow with it")
    rows = []
    try:
        for loop in args.loops.split(","):
            rows += bench_server(args, env, loop, wrk, lua, bodies)
    finally:
        if lua:
            os.unlink(lua)
    by = {(r["loop"], r["variant"]): r for r in rows}
    for loop in args.loops.split(","):
        report_goals(loop, {v: by[loop, v]
                            for v in [n for n, _ in VARIANTS]
                            + [CEILING, NO_WORK]})

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    rec = Recorder("bench_fastapi", list(rows[0]), stamp, commit)
    for row in rows:
        rec.add(**row)
    rec.write()
    if not args.no_chart:
        chart(rows, pathlib.Path(args.chart),
              f"POST /search: numpy vs offloop, {args.rows:,} x {DIM}, "
              f"top-{K}, {args.concurrency} connections"
              f" ({client.split(',')[0]}), {os.cpu_count()} CPUs,"
              f" commit {commit}")
        print(f"chart: {args.chart}")


def bench_server(args, env, loop, wrk, lua, bodies):
    """Start the server on ``loop``, load every variant; the rows."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port),
                             "--rows", str(args.rows),
                             "--threads", str(args.threads),
                             "--loop", loop, "--http", args.http], env=env)
    rows = []
    try:
        wait_ready(port, proc)
        # The numpy and offloop endpoints agree on the best row.
        tops = {name: post(port, path, bodies[0])[0]
                for name, path in VARIANTS}
        if len(set(tops.values())) != 1:
            print(f"WARNING: top-1 differs between variants: {tops}")
        s0 = steal_ticks()
        idle = asyncio.run(probe_idle(port, 2.0))
        s1 = steal_ticks()
        print(f"[{loop}] GET /health with no load: p50 "
              f"{percentile(idle, 50) * 1e3:.2f} ms, p99 "
              f"{percentile(idle, 99) * 1e3:.2f} ms"
              f" ({len(idle)} probes), steal {steal_pct(s0, s1):.0f}%")
        print(f"[{loop}] {'variant':<27}{'req/s':>8}{'p50 ms':>9}"
              f"{'p99 ms':>9}{'health p99 ms':>15}{'steal %':>9}"
              f"{'errors':>8}")
        for name, path in VARIANTS:
            if name in UNCOALESCED:
                post_empty(port, "/bench-configure?max_batch=1")
            try:
                rows.append(load_variant(args, loop, port, wrk, lua, bodies,
                                         name, path))
            finally:
                if name in UNCOALESCED:
                    post_empty(port, "/bench-configure?max_batch=64")
        wait_ms = next(r["p50_ms"] for r in rows if r["variant"] == "offloop")
        rows.append(load_variant(args, loop, port, wrk, lua, bodies, CEILING,
                                 "/search-no-work?wait_ms=0"))
        rows.append(load_variant(args, loop, port, wrk, lua, bodies, NO_WORK,
                                 f"/search-no-work?wait_ms={wait_ms:.2f}"))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return rows


def load_variant(args, loop, port, wrk, lua, bodies, name, path):
    """Warm up, then load ``path`` with the prober beside it; the row."""
    if wrk:
        asyncio.run(load_wrk(wrk, lua, port, path, args.concurrency,
                             args.warmup, probe=False))
        s0 = steal_ticks()
        row, health = asyncio.run(load_wrk(
            wrk, lua, port, path, args.concurrency, args.duration))
    else:
        asyncio.run(load_python(port, path, bodies, args.concurrency,
                                args.warmup))
        s0 = steal_ticks()
        row, health = asyncio.run(load_python(
            port, path, bodies, args.concurrency, args.duration))
    row = {"loop": loop, "variant": name, **row,
           "health_p50_ms": percentile(health, 50) * 1e3,
           "health_p99_ms": percentile(health, 99) * 1e3,
           "health_n": len(health),
           "steal_pct": steal_pct(s0, steal_ticks())}
    print(f"[{loop}] {name:<27}{row['rps']:8.1f}{row['p50_ms']:9.2f}"
          f"{row['p99_ms']:9.2f}{row['health_p99_ms']:15.2f}"
          f"{row['steal_pct']:9.0f}{row['errors']:8d}", flush=True)
    return row


def report_goals(loop, by):
    sync, tp, ol = by["sync"], by["threadpool"], by["offloop"]
    tpo, no_work = by["threadpool+offloop-kernel"], by[NO_WORK]
    alone, ceiling = by["offloop-uncoalesced"], by[CEILING]
    ratio = ol["rps"] / tp["rps"]
    stall = sync["health_p99_ms"] / ol["health_p99_ms"]
    print(f"[{loop}] kernel alone (threadpool+offloop-kernel / threadpool): "
          f"{tpo['rps'] / tp['rps']:.2f}x req/s; bridge alone (offloop / "
          f"threadpool+offloop-kernel): {ol['rps'] / tpo['rps']:.2f}x req/s")
    print(f"[{loop}] goal: offloop req/s >= {GOAL_RPS:g}x threadpool (numpy):"
          f" {ratio:.2f}x  {verdict(ratio >= GOAL_RPS)}; the app with no "
          f"native work and no wait reaches {ceiling['rps']:.0f} req/s = "
          f"{ceiling['rps'] / tp['rps']:.2f}x threadpool (the bound)")
    print(f"[{loop}] goal: coalesced offloop p50 and p99 below "
          f"uncoalesced: {ol['p50_ms']:.1f} / {ol['p99_ms']:.1f} ms against "
          f"{alone['p50_ms']:.1f} / {alone['p99_ms']:.1f} ms, "
          f"{ol['rps'] / alone['rps']:.2f}x req/s  "
          f"{verdict(ol['p50_ms'] < alone['p50_ms'] and ol['p99_ms'] < alone['p99_ms'])}")
    print(f"[{loop}] goal: offloop /health p99 under load <= "
          f"{GOAL_HEALTH_MS:g} ms: {ol['health_p99_ms']:.2f} ms  "
          f"{verdict(ol['health_p99_ms'] <= GOAL_HEALTH_MS)}; with no native "
          f"work at {no_work['rps']:.0f} req/s: "
          f"{no_work['health_p99_ms']:.2f} ms; goal <= that + "
          f"{GOAL_NO_WORK_MS:g} ms  {verdict(ol['health_p99_ms'] <= no_work['health_p99_ms'] + GOAL_NO_WORK_MS)}")
    print(f"[{loop}] goal: sync shows the stall, /health p99 >= "
          f"{GOAL_STALL:g}x offloop's: {sync['health_p99_ms']:.1f} ms = "
          f"{stall:.0f}x  {verdict(stall >= GOAL_STALL)}")

if __name__ == "__main__":
    main()
