"""FastAPI under load: three ways to call the same top-k kernel.

uvicorn serves examples/fastapi_app.py (plus two extra routes) in a
subprocess on 127.0.0.1.  A bounded load generator in this process (asyncio
on raw sockets, HTTP/1.1 keep-alive) keeps a fixed number of POST /search
requests in flight for a fixed time against each variant in turn:

  (a) sync        offloop.blocking.top_k called inside ``async def``: the
                  loop thread waits for every search (the stall);
  (b) threadpool  the same call through ``run_in_threadpool`` (anyio's
                  40-thread limiter), FastAPI's usual advice;
  (c) offloop     ``await offloop.top_k``: the loop never waits.

The kernel is the same in all three (offloop's top-k over 100,000 x 384
unit vectors, split across the pool); only the way the endpoint waits
differs.  Meanwhile a prober on its own connection sends GET /health every
2 ms and records its latency: the loop's responsiveness under load.

It prints requests/s, p50/p99 request latency and /health p99 per variant,
writes a CSV to benchmarks/results/ and a chart (PNG, matplotlib) to
docs/bench_fastapi.png.  The client shares the machine with the server:
on a 2-core machine its own CPU use lowers every variant's figures alike,
so compare the variants with each other, within one run.

    python benchmarks/bench_fastapi.py [--duration 5] [--concurrency 16]
"""

import argparse
import asyncio
import csv
import datetime
import json
import os
import pathlib
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
VARIANTS = [("sync", "/search-sync"), ("threadpool", "/search-threadpool"),
            ("offloop", "/search")]
HEALTH_PERIOD = 0.002  # seconds between /health probes
START_DEADLINE = 120   # seconds for the server to answer /health


# ---- server -----------------------------------------------------------


def serve(port, rows):
    """Run the example app plus the two comparison routes (subprocess)."""
    sys.path.insert(0, str(ROOT / "examples"))
    import uvicorn
    from fastapi import Request
    from fastapi.concurrency import run_in_threadpool

    import fastapi_app
    import offloop

    app = fastapi_app.create_app(rows=rows)

    def query_of(body, request):
        m = request.app.state.matrix
        return (m[body.like] if body.like is not None else body.query), m

    def results(scores, idx):
        return {"results": [{"index": int(i), "score": float(s)}
                            for i, s in zip(idx, scores)]}

    @app.post("/search-sync")
    async def search_sync(body: fastapi_app.Query, request: Request):
        q, m = query_of(body, request)
        return results(*offloop.blocking.top_k(q, m, k=body.k,
                                               normalized=True))

    @app.post("/search-threadpool")
    async def search_threadpool(body: fastapi_app.Query, request: Request):
        q, m = query_of(body, request)
        return results(*await run_in_threadpool(
            offloop.blocking.top_k, q, m, k=body.k, normalized=True))

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning",
                loop="asyncio", access_log=False)


# ---- client -----------------------------------------------------------


def request_bytes(method, path, body=None):
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body is None:
        return (head + "\r\n").encode()
    data = json.dumps(body).encode()
    return (head + "Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def roundtrip(reader, writer, payload):
    """Send one request, read one response; return its status."""
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def worker(port, payloads, stop_at, latencies, errors, offset):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            status = await roundtrip(reader, writer,
                                     payloads[i % len(payloads)])
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors.append(status)
            i += 1
    finally:
        writer.close()


async def prober(port, stop_at, latencies):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = request_bytes("GET", "/health")
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await roundtrip(reader, writer, payload)
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(HEALTH_PERIOD)
    finally:
        writer.close()


async def load(port, path, concurrency, duration, dim):
    """Fixed concurrency for a fixed time; the latencies of both kinds."""
    import numpy

    rng = numpy.random.default_rng(7)
    payloads = [request_bytes("POST", path, {
        "query": [round(float(x), 5) for x in rng.standard_normal(dim)],
        "k": 10}) for _ in range(32)]
    lat, health, errors = [], [], []
    stop_at = time.perf_counter() + duration
    t0 = time.perf_counter()
    await asyncio.gather(
        prober(port, stop_at, health),
        *(worker(port, payloads, stop_at, lat, errors, i)
          for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return lat, health, errors, elapsed


def pct(values, q):
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] \
        if len(values) > 1 else values[0]


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


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                              cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except OSError:
        return "?"


def chart(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    colors = ["#c0504d", "#9bbb59", "#4f81bd"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, key, label in zip(
            axes, ["rps", "p99_ms", "health_p99_ms"],
            ["requests/s (higher is better)", "p99 latency, ms (lower)",
             "/health p99 under load, ms (lower)"]):
        values = [r[key] for r in rows]
        bars = ax.bar(names, values, color=colors[:len(rows)])
        ax.set_title(label, fontsize=10)
        ax.bar_label(bars, fmt="%.1f", fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of load per variant")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chart", default=str(ROOT / "docs" /
                                               "bench_fastapi.png"))
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--serve", type=int, metavar="PORT",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.rows)

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port),
                             "--rows", str(args.rows)])
    rows = []
    try:
        wait_ready(port, proc)
        print(f"# bench_fastapi: {platform.machine()}, {os.cpu_count()} CPUs,"
              f" Python {platform.python_version()}, commit {commit()}; "
              f"{args.rows} x 384 matrix, top-10, concurrency "
              f"{args.concurrency}, {args.duration:g} s per variant")
        print(f"{'variant':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'health p99 ms':>15}{'errors':>8}")
        for name, path in VARIANTS:
            asyncio.run(load(port, path, args.concurrency, args.warmup, 384))
            lat, health, errors, elapsed = asyncio.run(
                load(port, path, args.concurrency, args.duration, 384))
            row = {"variant": name, "rps": len(lat) / elapsed,
                   "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
                   "health_p99_ms": pct(health, 99) * 1e3,
                   "health_n": len(health), "errors": len(errors)}
            rows.append(row)
            print(f"{name:<12}{row['rps']:9.1f}{row['p50_ms']:9.2f}"
                  f"{row['p99_ms']:9.2f}{row['health_p99_ms']:15.2f}"
                  f"{row['errors']:8d}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    by = {r["variant"]: r for r in rows}
    print(f"offloop / threadpool requests/s: "
          f"{by['offloop']['rps'] / by['threadpool']['rps']:.2f}x; "
          f"/health p99 under load: sync {by['sync']['health_p99_ms']:.2f} ms,"
          f" threadpool {by['threadpool']['health_p99_ms']:.2f} ms, "
          f"offloop {by['offloop']['health_p99_ms']:.2f} ms")

    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with open(out / f"bench_fastapi-{stamp}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    if not args.no_chart:
        chart(rows, pathlib.Path(args.chart),
              f"POST /search, {args.rows:,} x 384, top-10, "
              f"{args.concurrency} in flight, {os.cpu_count()} CPUs "
              f"(commit {commit()})")
        print(f"chart: {args.chart}")


if __name__ == "__main__":
    main()
