"""The examples: native_ext (a C extension on offloop.h), the FastAPI app
and the Flask app.

native_ext is built and installed into this environment once per run
(``pip install --no-build-isolation examples/native_ext``, under a file
lock, skipped when the installed build matches the sources).  Its results
are checked against a Python reference; the FastAPI app runs through
httpx's ASGITransport on both loops, and once for real: uvicorn in a
subprocess on 127.0.0.1, polled until /health answers, stopped with
SIGINT.  Every wait has a deadline.
"""

import array
import asyncio
import fcntl
import hashlib
import importlib
import importlib.util
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy
import pytest

import offloop
from offloop import _testing

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NATIVE = EXAMPLES / "native_ext"
DEADLINE = 30  # seconds, for every wait below
MOD = 1_000_000_007
ROWS = 2000  # the search matrix of the apps under test

httpx = pytest.importorskip("httpx")
fastapi = pytest.importorskip("fastapi")
flask = pytest.importorskip("flask")


# ---- building native_ext ----------------------------------------------


def _sources_digest():
    h = hashlib.sha256(sys.executable.encode())
    files = [ROOT / "include" / "offloop.h", NATIVE / "pyproject.toml",
             NATIVE / "CMakeLists.txt", *sorted((NATIVE / "src").rglob("*"))]
    for f in files:
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _installed_digest():
    spec = importlib.util.find_spec("native_ext")
    if spec is None or spec.origin is None:
        return None
    stamp = pathlib.Path(spec.origin).parent / "BUILD_DIGEST"
    return stamp.read_text().strip() if stamp.is_file() else None


def _install_native_ext():
    try:
        import scikit_build_core  # noqa: F401
    except ImportError:
        pytest.skip("scikit-build-core is missing: it builds "
                    "examples/native_ext (pip install -e '.[test]')")
    digest = _sources_digest()
    lock_path = ROOT / "build" / "native_ext.lock"
    lock_path.parent.mkdir(exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs: one build
        if _installed_digest() == digest:
            return
        # Keep the sanitizer CI stage's LD_PRELOAD out of pip and cmake.
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q",
             "--no-build-isolation", "--no-deps", "--force-reinstall",
             str(NATIVE)],
            capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("native_ext")
        stamp = pathlib.Path(spec.origin).parent / "BUILD_DIGEST"
        stamp.write_text(digest + "\n")


@pytest.fixture(scope="session")
def native_ext():
    _install_native_ext()
    importlib.invalidate_caches()
    return importlib.import_module("native_ext")


@pytest.fixture
def nx(native_ext):
    """native_ext; every context it allocated is released by the end."""
    before = native_ext.live_contexts()
    yield native_ext
    assert _testing.wait_idle(DEADLINE)
    _testing.live_jobs()  # drains jobs of closed loops
    assert native_ext.live_contexts() == before


# ---- reference ---------------------------------------------------------


def _wrap64(x):
    return (x + 2**63) % 2**64 - 2**63


def _c_rem(a, m):
    r = abs(a) % m
    return -r if a < 0 else r


def process_reference(numbers, rounds=1000):
    """process_numbers in plain Python: int64 wrap-around, C remainder."""
    out = []
    for val in numbers:
        for _ in range(rounds):
            val = _c_rem(_wrap64((val + 1) * 2), MOD)
        out.append(val)
    return out


def process_reference_np(numbers, rounds):
    """The same with numpy, for big inputs (int64 arrays wrap, fmod is
    C's remainder)."""
    v = numpy.array(numbers, dtype=numpy.int64)
    for _ in range(rounds):
        v = numpy.fmod((v + 1) * 2, MOD)
    return v


def test_numpy_reference_agrees_with_python_reference():
    numbers = [0, 1, -1, 7, -(2**63), 2**63 - 1, 2**62, -(2**62) - 5]
    for rounds in (0, 1, 3, 50):
        assert (process_reference_np(numbers, rounds).tolist()
                == process_reference(numbers, rounds))


# ---- native_ext: results ------------------------------------------------


async def test_native_double(loop, nx):
    assert await nx.double(21) == 42
    assert await nx.double(-4) == -8
    assert await nx.double(1.25) == 2.5
    assert await nx.double(2**62 - 1) == 2**63 - 2
    assert nx.blocking.double(21) == 42


async def test_native_sum_squares(loop, nx):
    assert await nx.sum_squares(3, 4) == 25
    assert await nx.sum_squares(-3, 0.5) == 9.25
    assert nx.blocking.sum_squares(5, 12) == 169


@pytest.mark.parametrize("make", [
    list, tuple,
    lambda xs: numpy.array(xs, dtype=numpy.int64),
    lambda xs: array.array("q", xs),
], ids=["list", "tuple", "ndarray", "array"])
async def test_native_process_numbers_matches_reference(loop, nx, make):
    numbers = [0, 1, -1, 12345, -(2**63), 2**63 - 1, 999_999_999]
    expected = process_reference(numbers, 37)
    out = await nx.process_numbers(make(numbers), rounds=37)
    assert isinstance(out, numpy.ndarray) and out.dtype == numpy.int64
    assert out.tolist() == expected
    assert nx.blocking.process_numbers(make(numbers), 37).tolist() == expected


async def test_native_process_numbers_default_rounds_and_edges(loop, nx):
    assert (await nx.process_numbers([5])).tolist() == process_reference([5])
    assert (await nx.process_numbers([])).tolist() == []
    assert (await nx.process_numbers([3, -3], rounds=0)).tolist() == [3, -3]


async def test_native_process_numbers_big_input_uses_many_chunks(loop, nx):
    rng = numpy.random.default_rng(1)
    numbers = rng.integers(-(2**63), 2**63 - 1, 200_000, dtype=numpy.int64)
    chunks = offloop.stats()["chunks"]
    out = await nx.process_numbers(numbers, rounds=100)
    assert numpy.array_equal(out, process_reference_np(numbers, 100))
    assert offloop.stats()["chunks"] - chunks > 1
    assert numpy.array_equal(nx.blocking.process_numbers(numbers, 100), out)


async def test_native_process_numbers_does_not_touch_its_input(loop, nx):
    numbers = numpy.arange(1000, dtype=numpy.int64)
    await nx.process_numbers(numbers, rounds=5)
    assert numpy.array_equal(numbers, numpy.arange(1000))


async def test_native_gather_of_many_calls(loop, nx):
    results = await asyncio.gather(*(nx.sum_squares(i, i) for i in
                                     range(500)))
    assert results == [2 * i * i for i in range(500)]


# ---- native_ext: bad input ----------------------------------------------


@pytest.mark.parametrize("call, exc, match", [
    (lambda nx: nx.double("2"), TypeError, r"double\(\): x must be an int "
                                           r"or a float, not str"),
    (lambda nx: nx.double(True), TypeError, "not bool"),
    (lambda nx: nx.double(2**62), OverflowError, "2 \\* x does not fit"),
    (lambda nx: nx.double(2**64), OverflowError, "x does not fit"),
    (lambda nx: nx.sum_squares(1), TypeError, "takes 2 arguments"),
    (lambda nx: nx.sum_squares(1, None), TypeError, "b must be"),
    (lambda nx: nx.process_numbers("123"), TypeError,
     "numbers must be a list of ints or an int64 buffer"),
    (lambda nx: nx.process_numbers([1, 2.5]), TypeError,
     r"numbers\[1\] must be an int, not float"),
    (lambda nx: nx.process_numbers([1, True]), TypeError, r"numbers\[1\]"),
    (lambda nx: nx.process_numbers([2**63]), OverflowError,
     r"numbers\[0\] does not fit"),
    (lambda nx: nx.process_numbers(numpy.zeros(3)), TypeError,
     "must hold int64 values, got a buffer of format 'd'"),
    (lambda nx: nx.process_numbers(numpy.zeros((2, 2), numpy.int64)),
     ValueError, "must be 1-D, got 2"),
    (lambda nx: nx.process_numbers(numpy.zeros(8, numpy.int64)[::2]),
     ValueError, "C-contiguous"),
    (lambda nx: nx.process_numbers(b"12345678"), TypeError, "format 'B'"),
    (lambda nx: nx.process_numbers([1], rounds=-1), ValueError,
     "rounds must be between 0"),
    (lambda nx: nx.process_numbers([1], rounds=1.5), TypeError,
     "rounds must be an int, not float"),
    (lambda nx: nx.process_numbers([1], 2, 3), TypeError, "at most 2"),
], ids=lambda v: v if isinstance(v, str) else None)
async def test_native_bad_input_raises_at_the_call(loop, nx, call, exc,
                                                   match):
    submitted = offloop.stats()["submitted"]
    with pytest.raises(exc, match=match):
        call(nx)
    assert offloop.stats()["submitted"] == submitted  # nothing queued


async def test_native_error_found_on_the_worker_reaches_the_caller(loop, nx):
    with pytest.raises(OverflowError, match="a\\*a \\+ b\\*b does not fit"):
        await nx.sum_squares(2**32, 2**32)
    with pytest.raises(OverflowError):
        nx.blocking.sum_squares(-(2**40), 1)


def test_native_without_running_loop_raises(nx):
    with pytest.raises(RuntimeError, match="no running event loop"):
        nx.double(1)


# ---- native_ext: cancellation --------------------------------------------


async def _until(predicate):
    async with asyncio.timeout(DEADLINE):
        while not predicate():
            await asyncio.sleep(0)


async def test_native_cancel_stops_a_running_process_numbers(loop, nx):
    # 64 chunks of ~10^8 steps each: minutes of work unless cancelled.
    before = offloop.stats()
    task = asyncio.ensure_future(nx.process_numbers([1] * 64,
                                                    rounds=10**8))
    await _until(lambda: offloop.stats()["started"] > before["started"])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(DEADLINE):
        while offloop.stats()["running"] > 0:
            await asyncio.sleep(0.001)
    assert offloop.stats()["chunks"] - before["chunks"] < 64


# ---- the FastAPI app through ASGITransport --------------------------------


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fastapi_app(native_ext):
    return _load("fastapi_app")


@pytest.fixture
async def client(fastapi_app, nx):
    app = fastapi_app.create_app(rows=ROWS)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://testserver") as c:
            c.app = app
            yield c


async def test_fastapi_seed_endpoints(loop, client):
    r = await client.get("/calc/21")
    assert r.status_code == 200 and r.json() == {"n": 21, "result": 42}
    r = await client.get("/sum-squares", params={"a": 3, "b": 4})
    assert r.json() == {"a": 3, "b": 4, "result": 25}
    r = await client.post("/process-numbers",
                          json={"numbers": [1, 2, -3], "rounds": 10})
    assert r.json() == {"results": process_reference([1, 2, -3], 10)}
    r = await client.post("/process-numbers", json={"numbers": [7]})
    assert r.json() == {"results": process_reference([7])}


async def test_fastapi_vector_endpoints(loop, client):
    r = await client.post("/similarity", json={"a": [1, 0], "b": [2, 0]})
    assert r.status_code == 200
    assert r.json()["similarity"] == pytest.approx(1.0)
    r = await client.post("/normalize", json={"vectors": [[3, 4], [0, 2]]})
    assert numpy.allclose(r.json()["vectors"], [[0.6, 0.8], [0, 1]])


async def test_fastapi_search_matches_a_numpy_reference(loop, client):
    m = client.app.state.matrix
    assert m.shape == (ROWS, 384)
    q = numpy.random.default_rng(5).standard_normal(384).astype("float32")
    r = await client.post("/search", json={"query": q.tolist(), "k": 5})
    assert r.status_code == 200
    got = r.json()["results"]
    scores = m @ (q / numpy.linalg.norm(q))
    best = numpy.argsort(-scores)[:5]
    assert [g["index"] for g in got] == best.tolist()
    assert [g["score"] for g in got] == pytest.approx(scores[best],
                                                       abs=1e-4)
    r = await client.post("/search", json={"like": 42, "k": 3})
    top = r.json()["results"][0]
    assert top["index"] == 42 and top["score"] == pytest.approx(1.0)


async def test_fastapi_health_and_stats(loop, client):
    assert (await client.get("/health")).json() == {"status": "ok"}
    stats = (await client.get("/stats")).json()
    assert stats["threads"] >= 1 and "completed" in stats


@pytest.mark.parametrize("method, url, body, match", [
    ("get", "/calc/abc", None, "valid integer"),
    ("get", "/sum-squares?a=1", None, "Field required"),
    ("post", "/process-numbers", {"numbers": "x"}, "valid list"),
    ("post", "/process-numbers", {"numbers": [1], "rounds": -1},
     "greater than or equal to 0"),
    ("post", "/similarity", {"a": [], "b": [1]}, "at least 1"),
    ("post", "/search", {"k": 3}, "exactly one of 'query' and 'like'"),
    ("post", "/search", {"like": 1, "k": 0}, "greater than or equal to 1"),
])
async def test_fastapi_validation_errors_are_422(loop, client, method, url,
                                                 body, match):
    r = await getattr(client, method)(url, **({"json": body} if body
                                               else {}))
    assert r.status_code == 422
    assert match in r.text


@pytest.mark.parametrize("method, url, body, match", [
    ("get", f"/calc/{2**62}", None, "2 * x does not fit"),
    ("get", f"/sum-squares?a={2**40}&b=1", None, "does not fit"),
    ("post", "/process-numbers", {"numbers": [2**64]}, "does not fit"),
    ("post", "/similarity", {"a": [1, 2], "b": [1]}, "length"),
    ("post", "/search", {"query": [1.0, 2.0]}, "384"),
    ("post", "/search", {"like": ROWS}, "like must be below"),
])
async def test_fastapi_native_errors_are_422_with_the_message(
        loop, client, method, url, body, match):
    r = await getattr(client, method)(url, **({"json": body} if body
                                               else {}))
    assert r.status_code == 422, r.text
    assert match in r.json()["detail"]


async def test_fastapi_concurrent_requests(loop, client):
    rs = await asyncio.gather(*(client.get(f"/calc/{i}") for i in
                                range(100)))
    assert [r.json()["result"] for r in rs] == [2 * i for i in range(100)]


# ---- the FastAPI app for real: uvicorn on loopback ------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fastapi_app_under_uvicorn_on_loopback(native_ext):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # The environment as is: under the sanitizer CI stage, this Python
    # loads a sanitized offloop and needs the same LD_PRELOAD.
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "fastapi_app.py"), "--port",
         str(port), "--rows", str(ROWS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + DEADLINE
        with httpx.Client(base_url=base, timeout=5) as c:
            while True:
                assert proc.poll() is None, proc.communicate()
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "no /health answer"
                time.sleep(0.05)  # polling a subprocess, bounded
            assert c.get("/calc/21").json()["result"] == 42
            r = c.post("/search", json={"like": 7, "k": 2})
            assert r.json()["results"][0]["index"] == 7
            assert c.get("/sum-squares?a=x&b=1").status_code == 422
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail("uvicorn did not stop on SIGINT")
    assert proc.returncode == 0, err
    assert f"curl {base}/calc/21" in out
    assert "Traceback" not in err


# ---- the Flask app ---------------------------------------------------------


@pytest.fixture(scope="module")
def flask_client(native_ext):
    app = _load("flask_app").create_app(rows=ROWS)
    return app.test_client()


def test_flask_endpoints(flask_client, nx):
    c = flask_client
    assert c.get("/calc/21").get_json() == {"n": 21, "result": 42}
    assert c.get("/calc/-5").get_json()["result"] == -10
    assert c.get("/sum-squares?a=3&b=4").get_json()["result"] == 25
    r = c.post("/process-numbers", json={"numbers": [1, 2], "rounds": 10})
    assert r.get_json() == {"results": process_reference([1, 2], 10)}
    r = c.post("/similarity", json={"a": [1, 0], "b": [1, 0]})
    assert r.get_json()["similarity"] == pytest.approx(1.0)
    r = c.post("/normalize", json={"vectors": [[3, 4]]})
    assert numpy.allclose(r.get_json()["vectors"], [[0.6, 0.8]])
    r = c.post("/search", json={"like": 9, "k": 3})
    assert r.get_json()["results"][0]["index"] == 9
    assert c.get("/health").get_json() == {"status": "ok"}
    assert c.get("/stats").get_json()["threads"] >= 1


@pytest.mark.parametrize("method, url, body, match", [
    ("get", "/calc/abc", None, "n must be an integer"),
    ("get", f"/calc/{2**62}", None, "does not fit"),
    ("post", "/process-numbers", {"numbers": [1.5]}, "must be an int"),
    ("post", "/process-numbers", None, "JSON object"),
    ("post", "/similarity", {"a": [1], "b": [1, 2]}, "length"),
    ("post", "/search", {"like": ROWS}, "like must be in"),
    ("post", "/search", {"query": [1.0], "k": 2}, "384"),
])
def test_flask_bad_input_is_422(flask_client, nx, method, url, body, match):
    r = getattr(flask_client, method)(url, **({"json": body} if body
                                              else {}))
    assert r.status_code == 422
    assert match in r.get_json()["detail"]
