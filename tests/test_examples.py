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
import contextlib
import fcntl
import hashlib
import http.client
import importlib
import importlib.util
import io
import json
import os
import pathlib
import select
import signal
import socket
import subprocess
import sys
import time
import types

import numpy
import pytest

import offloop
from offloop import _testing

from workers import held_workers

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


async def test_native_double_batched_coalesces_concurrent_calls(loop, nx):
    """Calls that wait for a worker together run as one execute_batch;
    a lone call runs at once, alone (batch of 1)."""
    assert await nx.double_batched(21) == (42, 1)
    assert nx.blocking.double_batched(2.5) == (5.0, 1)
    with held_workers():
        before = offloop.stats()
        futs = [nx.double_batched(i) for i in range(10)]
    assert await asyncio.gather(*futs) == [(2 * i, 10) for i in range(10)]
    after = offloop.stats()
    assert (after["batches"] - before["batches"],
            after["batched"] - before["batched"]) == (1, 10)


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


class _Index:
    """An int only through __index__, like a user's own integer type."""

    def __init__(self, value):
        self.value = value

    def __index__(self):
        return self.value


INDEX_INTS = [numpy.int64, numpy.int32, numpy.uint8, _Index]
INDEX_IDS = ["int64", "int32", "uint8", "__index__"]


@pytest.mark.parametrize("make", INDEX_INTS, ids=INDEX_IDS)
async def test_native_integer_arguments_take_what_operator_index_takes(
        loop, nx, make):
    assert await nx.double(make(21)) == 42
    assert nx.blocking.double(make(21)) == 42
    assert await nx.sum_squares(make(3), make(4)) == 25
    assert nx.blocking.sum_squares(make(5), 12) == 169
    expected = process_reference([1, 2, 3], 10)
    out = await nx.process_numbers([make(1), 2, make(3)], rounds=make(10))
    assert out.tolist() == expected
    out = nx.blocking.process_numbers((make(1), make(2), 3), make(10))
    assert out.tolist() == expected


@pytest.mark.parametrize("call, exc, match", [
    (lambda f: f.double(numpy.float32(2)), TypeError,
     r"double\(\): x must be an int or a float, not numpy.float32"),
    (lambda f: f.double(numpy.True_), TypeError, "x must be .* not numpy.bool"),
    (lambda f: f.sum_squares(1, "2"), TypeError, "b must be .* not str"),
    (lambda f: f.process_numbers([1], rounds=numpy.float32(2)), TypeError,
     "rounds must be an int, not numpy.float32"),
    (lambda f: f.process_numbers([1], rounds=2.0), TypeError,
     "rounds must be an int, not float"),
    (lambda f: f.process_numbers([1], rounds="2"), TypeError,
     "rounds must be an int, not str"),
    (lambda f: f.process_numbers([1], rounds=True), TypeError,
     "rounds must be an int, not bool"),
    (lambda f: f.process_numbers([1], rounds=numpy.int64(-1)), ValueError,
     "rounds must be between 0"),
    (lambda f: f.process_numbers([1, numpy.float32(2)]), TypeError,
     r"numbers\[1\] must be an int, not numpy.float32"),
    (lambda f: f.process_numbers([numpy.True_]), TypeError,
     r"numbers\[0\] must be an int, not numpy.bool"),
    (lambda f: f.process_numbers([numpy.uint64(2**64 - 1)]), OverflowError,
     r"numbers\[0\] does not fit"),
    (lambda f: f.double(_Index(2**63)), OverflowError, "x does not fit"),
], ids=["x float32", "x np.bool", "b str", "rounds float32", "rounds float",
        "rounds str", "rounds bool", "rounds -1", "item float32",
        "item np.bool", "item uint64 max", "x 2**63"])
async def test_native_refuses_what_is_not_an_int_on_both_twins(
        loop, nx, call, exc, match):
    submitted = offloop.stats()["submitted"]
    with pytest.raises(exc, match=match):
        call(nx)
    with pytest.raises(exc, match=match):
        call(nx.blocking)
    assert offloop.stats()["submitted"] == submitted


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


# ---- the FastAPI app: the input rules ---------------------------------------

JSON = {"content-type": "application/json"}


def _strict_json(text):
    """Parse JSON that must hold no NaN or Infinity (json.loads takes
    them)."""
    def refuse(name):
        raise AssertionError(f"{name} in a response")
    return json.loads(text, parse_constant=refuse)


QUERY = ", ".join(["1"] * 383)


@pytest.mark.parametrize("url, body, loc", [
    ("/similarity", '{"a": [1e309, 0], "b": [1, 1]}', ["a", 0]),
    ("/similarity", '{"a": [1, 0], "b": [-1e309, 1]}', ["b", 0]),
    ("/similarity", '{"a": [NaN, 0], "b": [1, 1]}', ["a", 0]),
    ("/normalize", '{"vectors": [[1e309, 1]]}', ["vectors", 0, 0]),
    ("/normalize", '{"vectors": [[1, 2], [3, Infinity]]}',
     ["vectors", 1, 1]),
    ("/normalize", '{"vectors": [[1, 2], [3, -Infinity]]}',
     ["vectors", 1, 1]),
    ("/search", f'{{"query": [1e309, {QUERY}], "k": 3}}', ["query", 0]),
    ("/search", f'{{"query": [NaN, {QUERY}], "k": 3}}', ["query", 0]),
    ("/search", f'{{"query": [{QUERY}, Infinity]}}', ["query", 383]),
], ids=["similarity 1e309", "similarity -1e309", "similarity NaN",
        "normalize 1e309", "normalize Infinity", "normalize -Infinity",
        "search 1e309", "search NaN", "search Infinity"])
async def test_fastapi_non_finite_input_is_422(loop, client, url, body, loc):
    r = await client.post(url, content=body, headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json() == {"errors": 1, "detail": [{
        "loc": ["body", *loc], "msg": "Input should be a finite number",
        "type": "finite_number"}]}


async def test_fastapi_extreme_finite_inputs_get_exact_finite_answers(
        loop, client):
    # float32 squares overflow past ~1.8e19 and underflow below ~1e-19;
    # the app scales each vector first, so none of this is a zero row.
    rows = [[1e30, 1e30], [3e38, -4e38], [1e300, 1e-300], [1e-30, 2e-30],
            [0, 0], [5e-324, 0], [-1e308, 1e308]]
    r = await client.post("/normalize", json={"vectors": rows})
    assert r.status_code == 200, r.text
    got = numpy.array(_strict_json(r.text)["vectors"])
    h = 0.5 ** 0.5
    want = [[h, h], [0.6, -0.8], [1, 0], [5 ** -0.5, 2 * 5 ** -0.5],
            [0, 0], [1, 0], [-h, h]]
    numpy.testing.assert_allclose(got, want, atol=1e-6)
    for a, b, want in [([1e300, 1e300], [1e-300, 1e-300], 1.0),
                       ([1e20, 0], [1e20, 1e20], h),
                       ([3e38, 3e38], [-3e38, -3e38], -1.0),
                       ([1e-30, 0], [0, 1e-30], 0.0),
                       ([0, 0], [1, 1], 0.0)]:
        r = await client.post("/similarity", json={"a": a, "b": b})
        assert r.status_code == 200, r.text
        assert _strict_json(r.text)["similarity"] == pytest.approx(
            want, abs=1e-6)
    row = client.app.state.matrix[42].astype(float)
    for scale in (1e30, 1e-30, 1e300):
        r = await client.post("/search", json={"query": (row * scale)
                                               .tolist(), "k": 2})
        assert r.status_code == 200, r.text
        best = _strict_json(r.text)["results"][0]
        assert best["index"] == 42
        assert best["score"] == pytest.approx(1.0, abs=1e-5)


async def test_fastapi_422_never_echoes_the_input(loop, client):
    marker = "Z" * 200_000
    r = await client.post("/process-numbers",
                          json={"numbers": [1, 2, marker]})
    assert r.status_code == 422
    assert len(r.content) < 1000 and "ZZZ" not in r.text
    (error,) = r.json()["detail"]
    assert error == {"loc": ["body", "numbers", 2], "type": "int_parsing",
                     "msg": "Input should be a valid integer, unable to "
                            "parse string as an integer"}
    # A list stops at its first bad item: one error, not 100,000.
    r = await client.post("/process-numbers",
                          json={"numbers": ["x"] * 100_000})
    assert r.json()["errors"] == 1 and len(r.content) < 1000
    r = await client.post("/normalize", json={"vectors": [["y"] * 1000]
                                              * 100})
    assert r.json()["errors"] == 1 and len(r.content) < 1000
    r = await client.post("/search", json={"query": ["q"] * 4096, "k": 3})
    assert r.json()["errors"] == 1 and len(r.content) < 1000
    # Broken JSON: its position, not the document.
    r = await client.post("/process-numbers",
                          content=b'{"numbers": [' + b"7, " * 100_000,
                          headers=JSON)
    assert r.status_code == 422 and len(r.content) < 1000
    assert r.json()["detail"][0]["type"] == "json_invalid"


async def test_fastapi_422_lists_at_most_max_errors(loop, fastapi_app):
    from fastapi.exceptions import RequestValidationError

    errors = [{"loc": ("body", "numbers", i), "msg": "bad", "type": "t",
               "input": "Z" * 1000} for i in range(1000)]
    r = await fastapi_app.validation_error(None,
                                           RequestValidationError(errors))
    body = json.loads(r.body)
    assert r.status_code == 422 and body["errors"] == 1000
    assert len(body["detail"]) == fastapi_app.MAX_ERRORS
    assert b"ZZZ" not in r.body


async def test_fastapi_body_over_the_limit_is_413(loop, client, fastapi_app):
    limit = fastapi_app.MAX_BODY
    big = b'{"numbers": [' + b"1," * (limit // 2) + b'1]}'
    assert len(big) > limit
    r = await client.post("/process-numbers", content=big, headers=JSON)
    assert r.status_code == 413
    assert r.json() == {"detail": "the request body is over this app's "
                                  f"limit of {limit} bytes"}
    # Chunked, no Content-Length: counted as it streams in, and no more
    # of it is read once the count passes the limit.
    pulled = []

    async def chunks():
        for i in range(0, len(big), 65536):
            pulled.append(i)
            yield big[i:i + 65536]

    r = await client.post("/process-numbers", content=chunks(),
                          headers=JSON)
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and str(limit) in r.json()["detail"]
    assert len(pulled) == limit // 65536 + 1  # stopped past the limit
    # At the limit exactly: served.
    body = b'{"numbers": [5], "rounds": 3}'
    body += b" " * (limit - len(body))
    r = await client.post("/process-numbers", content=body, headers=JSON)
    assert r.status_code == 200 and r.json() == {
        "results": process_reference([5], 3)}
    assert (await client.get("/health")).status_code == 200


async def test_fastapi_max_body_is_a_parameter(loop, fastapi_app, nx):
    app = fastapi_app.create_app(rows=ROWS, max_body=100)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://t") as c:
            r = await c.post("/similarity", json={"a": [1] * 30,
                                                  "b": [1] * 30})
            assert r.status_code == 413 and "100 bytes" in r.text
            r = await c.post("/similarity", json={"a": [1], "b": [2]})
            assert r.status_code == 200


async def _occupy_every_worker():
    """Long sleeps on every worker; returned once all of them run.

    Counted by "started", not "running": a worker that has just finished
    another job (the lifespan's batch_normalize) may still count as
    running while a sleeper waits in the queue."""
    s = offloop.stats()
    sleepers = [_testing.sleep(60) for _ in range(s["threads"])]
    await _until(lambda: offloop.stats()["started"] - s["started"]
                 >= s["threads"])
    assert offloop.stats()["queued"] == 0
    return sleepers


async def _release(sleepers):
    for s in sleepers:
        s.cancel()
    await asyncio.gather(*sleepers, return_exceptions=True)
    assert await asyncio.to_thread(_testing.wait_idle, DEADLINE)


def _asgi_post(path, body):
    """An ASGI scope of ``POST path`` with a JSON body."""
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path,
        "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }


@pytest.mark.parametrize("path, body", [
    ("/search", b'{"like": 3, "k": 2}'),
    ("/normalize", b'{"vectors": [' + b"[1, 2, 3, 4, 5, 6, 7, 8]," * 9000
     + b"[8, 7, 6, 5, 4, 3, 2, 1]]}"),
    ("/process-numbers", b'{"numbers": [1, 2, 3], "rounds": 100000}'),
], ids=["search", "normalize", "process-numbers"])
async def test_fastapi_a_disconnected_clients_job_is_cancelled(
        loop, client, path, body):
    """The ASGI app as a server drives it: the body, then, while the job
    waits for a worker, ``http.disconnect``."""
    sleepers = await _occupy_every_worker()
    try:
        before = offloop.stats()
        gone = asyncio.Event()
        messages = [{"type": "http.request", "body": body,
                     "more_body": False}]

        async def receive():
            if messages:
                return messages.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        sent = []

        async def send(message):
            sent.append(message)

        app = asyncio.ensure_future(client.app(_asgi_post(path, body),
                                               receive, send))
        await _until(lambda: app.done() or
                     offloop.stats()["queued"] > before["queued"])
        assert not app.done() and not sent, sent
        gone.set()
        async with asyncio.timeout(DEADLINE):
            await app
        after = offloop.stats()
        assert after["cancelled"] == before["cancelled"] + 1
        assert after["queued"] == before["queued"]
        assert sent[0]["status"] == 499  # for the log: nobody reads it
    finally:
        await _release(sleepers)
    assert offloop.stats()["started"] == before["started"]  # never ran


async def test_fastapi_a_connected_clients_job_is_not_cancelled(loop,
                                                                 client):
    sleepers = await _occupy_every_worker()
    before = offloop.stats()
    task = asyncio.ensure_future(client.post("/search",
                                             json={"like": 5, "k": 1}))
    await _until(lambda: offloop.stats()["queued"] > before["queued"])
    await _release(sleepers)
    r = await task
    assert r.status_code == 200 and r.json()["results"][0]["index"] == 5
    assert offloop.stats()["cancelled"] == before["cancelled"] + len(
        sleepers)


# ---- the FastAPI app for real: uvicorn on loopback ------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _uvicorn(*argv):
    """Run ``python *argv --port PORT`` (a uvicorn server) until /health
    answers; yield a namespace with ``port``, ``base`` and an httpx
    ``client``; stop the server with SIGINT.  Afterwards the namespace
    holds its ``out``, ``err`` and ``returncode``."""
    port = _free_port()
    srv = types.SimpleNamespace(port=port, base=f"http://127.0.0.1:{port}")
    # The environment as is: under the sanitizer CI stage, this Python
    # loads a sanitized offloop and needs the same LD_PRELOAD.
    proc = subprocess.Popen(
        [sys.executable, *map(str, argv), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + DEADLINE
        with httpx.Client(base_url=srv.base, timeout=DEADLINE) as c:
            while True:
                assert proc.poll() is None, proc.communicate()
                try:
                    if c.get("/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "no /health answer"
                time.sleep(0.05)  # polling a subprocess, bounded
            srv.client = c
            yield srv
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            srv.out, srv.err = proc.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("uvicorn did not stop on SIGINT")
        srv.returncode = proc.returncode


def test_fastapi_app_under_uvicorn_on_loopback(native_ext):
    with _uvicorn(EXAMPLES / "fastapi_app.py", "--rows", ROWS) as srv:
        c = srv.client
        assert c.get("/calc/21").json()["result"] == 42
        r = c.post("/search", json={"like": 7, "k": 2})
        assert r.json()["results"][0]["index"] == 7
        assert c.get("/sum-squares?a=x&b=1").status_code == 422
    assert srv.returncode == 0, srv.err
    assert f"curl {srv.base}/calc/21" in srv.out
    assert "Traceback" not in srv.err


def _post_head(port, path, length=None):
    """The head of ``POST path`` with a JSON body of ``length`` bytes, or
    chunked if None."""
    framing = (b"Transfer-Encoding: chunked" if length is None
               else b"Content-Length: %d" % length)
    return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\n%s\r\n\r\n"
            % (path.encode(), port, framing))


def _read_response(sock):
    """(status, JSON body) of the response waiting on ``sock``."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


def test_fastapi_50_mb_body_gets_413_while_health_answers(native_ext,
                                                         fastapi_app):
    limit = fastapi_app.MAX_BODY
    size = 50 * 2**20
    piece = b"1, " * 21845 + b"1,"  # 64 KiB of a list of numbers
    with _uvicorn(EXAMPLES / "fastapi_app.py", "--rows", ROWS) as srv:
        c = srv.client
        with socket.create_connection(("127.0.0.1", srv.port),
                                      timeout=DEADLINE) as sock:
            # A Content-Length over the limit is answered at once: the
            # 413 arrives before the client sent any of the 50 MB.
            sock.sendall(_post_head(srv.port, "/process-numbers", size))
            status, body = _read_response(sock)
            assert status == 413
            assert body["detail"] == ("the request body is over this app's "
                                      f"limit of {limit} bytes")
            assert c.get("/health").json() == {"status": "ok"}
            # The body anyway: uvicorn reads and discards it.
            head = b'{"numbers": ['
            sock.sendall(head)
            for sent in range(len(head), size, len(piece)):
                sock.sendall(piece[:size - sent])
            assert c.get("/health").json() == {"status": "ok"}
        with socket.create_connection(("127.0.0.1", srv.port),
                                      timeout=DEADLINE) as sock:
            # Chunked: counted as it streams in.  Halfway to the limit,
            # the server answers others; past it, the 413 comes without
            # waiting for the rest of the 50 MB.
            sock.sendall(_post_head(srv.port, "/process-numbers"))
            sent, checked = 0, False
            while not select.select([sock], [], [], 0)[0]:
                assert sent < size, "no answer before the whole body"
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
                if not checked and sent > limit // 2:
                    assert c.get("/health").json() == {"status": "ok"}
                    checked = True
            status, body = _read_response(sock)
            assert status == 413 and str(limit) in body["detail"]
            assert checked and sent < size
        assert c.get("/health").json() == {"status": "ok"}
    assert srv.returncode == 0, srv.err
    assert "Traceback" not in srv.err


# The example app plus two routes that hold every worker of the server's
# pool (long _testing.sleep jobs) and let them go: a job submitted in
# between waits in the queue, where a test can see it.
GATED_APP = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
import fastapi_app, offloop, uvicorn
from offloop import _testing

app = fastapi_app.create_app(rows=int(sys.argv[2]))
held = []


@app.post("/_test/hold")
async def hold():
    s = offloop.stats()
    held.extend(_testing.sleep(60) for _ in range(s["threads"]))
    async with asyncio.timeout(30):
        while offloop.stats()["started"] - s["started"] < s["threads"]:
            await asyncio.sleep(0.001)


@app.post("/_test/release")
async def release():
    for fut in held:
        fut.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    held.clear()
    assert await asyncio.to_thread(_testing.wait_idle, 30)


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[4]),
            log_level="warning")
"""


def _wait_for(predicate):
    """Poll ``predicate`` (a request to the server) until it holds."""
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)  # polling a subprocess, bounded


def test_fastapi_search_of_a_client_that_disconnects_is_cancelled(
        native_ext):
    with _uvicorn("-c", GATED_APP, EXAMPLES, ROWS) as srv:
        c = srv.client

        def stats():
            return c.get("/stats").json()

        c.post("/_test/hold").raise_for_status()
        before = stats()
        body = b'{"like": 7, "k": 3}'
        with socket.create_connection(("127.0.0.1", srv.port),
                                      timeout=DEADLINE) as sock:
            sock.sendall(_post_head(srv.port, "/search", len(body)) + body)
            # Its top_k waits behind the held workers ...
            _wait_for(lambda: stats()["queued"] > before["queued"])
        # ... and the client hangs up: uvicorn reports the disconnect to
        # the app, which cancels the job.
        _wait_for(lambda: stats()["cancelled"] > before["cancelled"])
        after = stats()
        assert after["cancelled"] == before["cancelled"] + 1
        assert after["queued"] == before["queued"]
        c.post("/_test/release").raise_for_status()
        assert stats()["started"] == before["started"]  # never scanned
        # A client that stays gets its answer.
        r = c.post("/search", json={"like": 7, "k": 2})
        assert r.json()["results"][0]["index"] == 7
    assert srv.returncode == 0, srv.err
    assert "Traceback" not in srv.err and "Exception" not in srv.err


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


@pytest.mark.parametrize("url, body", [
    ("/similarity", '{"a": [1e309, 0], "b": [1, 1]}'),
    ("/similarity", '{"a": [1, 0], "b": [NaN, 1]}'),
    ("/similarity", f'{{"a": [1, 0], "b": [{"9" * 400}, 1]}}'),
    ("/normalize", '{"vectors": [[1, 2], [-Infinity, 1]]}'),
    ("/search", f'{{"query": [1e309, {QUERY}]}}'),
    ("/search", f'{{"query": [NaN, {QUERY}]}}'),
], ids=["similarity 1e309", "similarity NaN", "similarity 10**400",
        "normalize -Infinity", "search 1e309", "search NaN"])
def test_flask_non_finite_input_is_422(flask_client, nx, url, body):
    r = flask_client.post(url, data=body, content_type="application/json")
    assert r.status_code == 422
    assert r.get_json()["detail"].endswith("must be a finite number")


def test_flask_extreme_finite_inputs_get_exact_finite_answers(flask_client,
                                                              nx):
    c = flask_client
    rows = [[1e30, 1e30], [3e38, -4e38], [1e300, 1e-300], [0, 0]]
    r = c.post("/normalize", json={"vectors": rows})
    h = 0.5 ** 0.5
    numpy.testing.assert_allclose(
        _strict_json(r.get_data(as_text=True))["vectors"],
        [[h, h], [0.6, -0.8], [1, 0], [0, 0]], atol=1e-6)
    r = c.post("/similarity", json={"a": [1e300, 1e300], "b": [1e-300, 0]})
    assert _strict_json(r.get_data(as_text=True))["similarity"] == (
        pytest.approx(h, abs=1e-6))
    row = c.application.config["MATRIX"][42].astype(float)
    r = c.post("/search", json={"query": (row * 1e30).tolist(), "k": 1})
    best = _strict_json(r.get_data(as_text=True))["results"][0]
    assert best["index"] == 42 and best["score"] == pytest.approx(1.0,
                                                                  abs=1e-5)


def test_flask_body_over_the_limit_is_413(flask_client, nx):
    limit = flask_client.application.config["MAX_BODY"]
    big = b'{"numbers": [' + b"1," * (limit // 2) + b"1]}"
    r = flask_client.post("/process-numbers", data=big,
                          content_type="application/json")
    assert r.status_code == 413
    assert r.get_json() == {"detail": "the request body is over this app's "
                                      f"limit of {limit} bytes"}
    body = b'{"numbers": [5], "rounds": 3}'
    body += b" " * (limit - len(body))
    r = flask_client.post("/process-numbers", data=body,
                          content_type="application/json")
    assert r.get_json() == {"results": process_reference([5], 3)}


class _Unsized:
    """A request body of unknown length, as a chunked upload reaches a
    WSGI app; counts what was read of it."""

    def __init__(self, data):
        self.file = io.BytesIO(data)

    def read(self, n=-1):
        return self.file.read(min(n, 65536) if n and n > 0 else 65536)


@pytest.mark.parametrize("extra, status", [(0, 200), (1, 413),
                                           (40 * 2**20, 413)])
def test_flask_chunked_body_is_counted(flask_client, nx, extra, status):
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    app = flask_client.application
    limit = app.config["MAX_BODY"]
    body = b'{"numbers": [5], "rounds": 3}'
    body += b" " * (limit - len(body) + extra)
    environ = EnvironBuilder(path="/process-numbers", method="POST",
                             content_type="application/json").get_environ()
    environ.pop("CONTENT_LENGTH", None)
    # What Werkzeug's server sets for Transfer-Encoding: chunked.
    environ["wsgi.input_terminated"] = True
    environ["wsgi.input"] = stream = _Unsized(body)
    out, got, _ = run_wsgi_app(app.wsgi_app, environ)
    assert int(got.split()[0]) == status, b"".join(out)
    assert stream.file.tell() <= limit + 1  # never read past the limit


def test_flask_errors_never_echo_the_input(flask_client, nx):
    c = flask_client
    r = c.get("/calc/" + "Z" * 5000)
    assert r.status_code == 422 and b"ZZZ" not in r.data
    r = c.post("/process-numbers", json={"numbers": [1, "Z" * 100_000]})
    assert r.status_code == 422 and len(r.data) < 200
    r = c.post("/search", json={"query": ["Z" * 100_000]})
    assert r.status_code == 422 and len(r.data) < 200
