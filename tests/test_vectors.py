"""The vector kernels from Python: agreement with a float64 numpy reference,
every SIMD path, bad input, buffers held by jobs, cancellation.

Most tests take the ``api`` fixture: the same calls made on asyncio, on
uvloop (awaited in a coroutine the test runs on its own loop, so hypothesis
can drive it) and through the blocking twins.  Errors raised when the
future is awaited are wrapped in ``Late``, so ``pytest.raises(ValueError)``
only matches errors raised at the call, before anything is queued.
"""

import array
import asyncio
import ctypes
import gc
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import offloop
from isas import ISAS
from offloop import _core, _testing

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None

NAMES = ("cosine_similarity", "batch_normalize", "cosine_similarities",
         "top_k")
TOL = 1e-5
EXAMPLES = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture,
                           HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)


class Late(Exception):
    """An exception raised by awaiting the future, not by the call."""


async def _call(fn, args, kwargs):
    fut = fn(*args, **kwargs)  # errors here are raised "at the call"
    assert isinstance(fut, asyncio.Future)
    try:
        return await fut
    except Exception as exc:
        raise Late(exc) from exc


class AsyncApi:
    def __init__(self, loop):
        self.loop = loop

    def __getattr__(self, name):
        fn = getattr(offloop, name)

        def call(*args, **kwargs):
            return self.loop.run_until_complete(_call(fn, args, kwargs))

        return call


def _loop_kinds():
    kinds = ["asyncio"]
    if uvloop is not None:
        kinds.append("uvloop")
    return kinds + ["blocking"]


@pytest.fixture(params=_loop_kinds())
def api(request):
    """offloop's vector calls, run on asyncio, uvloop, or blocking."""
    if request.param == "blocking":
        yield offloop.blocking
        return
    factory = (asyncio.new_event_loop if request.param == "asyncio"
               else uvloop.new_event_loop)
    loop = factory()
    errors = []
    loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
    try:
        yield AsyncApi(loop)
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    assert not errors, errors



# ---------------------------------------------------------------- references


def ref_cosines(q, m):
    """float64 cosine of each row of q (2-D) with each row of m."""
    q = np.asarray(q, np.float64)
    m = np.asarray(m, np.float64)
    qn = np.linalg.norm(q, axis=1)
    mn = np.linalg.norm(m, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (q @ m.T) / np.outer(qn, mn)
    s[np.outer(qn, mn) == 0] = 0.0
    return s


def ref_normalize(x):
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(n == 0, 0.0, x / n)
    return out


def check_top_k(scores, indices, ref_row, k):
    """One query's (scores, indices) against its float64 scores."""
    assert scores.shape == indices.shape == (k,)
    assert len(set(indices.tolist())) == k
    order = np.lexsort((np.arange(len(ref_row)), -ref_row))  # ties: index
    best = ref_row[order[:k]]
    # Scores: the right values, each the score of the row it names.
    np.testing.assert_allclose(scores, best, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(scores, ref_row[indices], rtol=TOL,
                               atol=TOL)
    # Best first; equal scores by lower index.
    for j in range(k - 1):
        assert scores[j] > scores[j + 1] or (
            scores[j] == scores[j + 1] and indices[j] < indices[j + 1])
    # Identical indices wherever the reference is not tied within
    # tolerance (with its neighbours, or with the best row left out).
    sorted_all = ref_row[order]
    for j in range(k):
        s = sorted_all[j]
        others = np.delete(sorted_all[:k + 1], j)
        if np.all(np.abs(others - s) > 4 * TOL * max(1.0, abs(s))):
            assert indices[j] == order[j], (j, indices, order[:k])


# ---------------------------------------------------------------- strategies

DIMS = st.sampled_from([1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100, 768])
FINITE = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@st.composite
def matrices(draw, rows=st.integers(1, 40), d=DIMS):
    """(float32 array, how to pass it) with adversarial rows mixed in."""
    n = draw(rows)
    dd = draw(d)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dd)).astype(np.float32)
    scale = draw(st.sampled_from([1.0, 1e-12, 1e12]))
    x *= np.float32(scale)
    for i in range(n):
        kind = draw(st.sampled_from(["plain"] * 6 + ["zero", "dup", "neg",
                                                      "scaled", "one-hot"]))
        if kind == "zero":
            x[i] = 0
        elif kind == "dup" and i > 0:
            x[i] = x[draw(st.integers(0, i - 1))]
        elif kind == "neg" and i > 0:
            x[i] = -x[i - 1]
        elif kind == "scaled" and i > 0:
            x[i] = x[i - 1] * np.float32(4.0)
        elif kind == "one-hot":
            x[i] = 0
            x[i, draw(st.integers(0, dd - 1))] = scale
    return x


def as_kind(x, kind):
    """x passed as float32 (in place), a contiguous row-offset slice,
    float64, a memoryview, or nested lists."""
    if kind == "f32":
        return x
    if kind == "f32-slice":
        big = np.empty((x.shape[0] + 2,) + x.shape[1:], np.float32)
        big[1:-1] = x
        view = big[1:-1]
        assert view.flags.c_contiguous and view.base is not None
        return view
    if kind == "f64":
        return x.astype(np.float64)
    if kind == "memoryview":
        return memoryview(x)
    if kind == "list":
        return x.tolist()
    raise AssertionError(kind)


KINDS = st.sampled_from(["f32", "f32", "f32-slice", "f64", "memoryview",
                         "list"])


# ---------------------------------------------------------------- agreement


@EXAMPLES
@given(data=st.data())
def test_cosine_similarity_agrees_with_float64(api, data):
    x = data.draw(matrices(rows=st.just(2)))
    a, b = x[0], x[1]
    got = api.cosine_similarity(as_kind(a, data.draw(KINDS)),
                                as_kind(b, data.draw(KINDS)))
    assert isinstance(got, float)
    ref = ref_cosines(a[None], b[None])[0, 0]
    assert got == pytest.approx(ref, rel=TOL, abs=TOL)


@EXAMPLES
@given(data=st.data())
def test_batch_normalize_agrees_with_float64(api, data):
    x = data.draw(matrices())
    kind = data.draw(KINDS)
    arg = as_kind(x, kind)
    got = api.batch_normalize(arg)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == x.shape and got is not arg
    np.testing.assert_allclose(got, ref_normalize(x), rtol=TOL, atol=1e-6)
    if kind == "f32":
        assert got.base is None  # a new array; x left alone
        np.testing.assert_array_equal(arg, x)


@EXAMPLES
@given(data=st.data())
def test_cosine_similarities_agrees_with_float64(api, data):
    m = data.draw(matrices())
    q = data.draw(matrices(rows=st.integers(1, 9),
                           d=st.just(m.shape[1])))
    one = data.draw(st.booleans())
    qa = q[0] if one else q
    got = api.cosine_similarities(as_kind(qa, data.draw(KINDS)),
                                  as_kind(m, data.draw(KINDS)))
    ref = ref_cosines(q, m)
    assert got.dtype == np.float32
    if one:
        assert got.shape == (m.shape[0],)
        ref = ref[0]
    else:
        assert got.shape == (q.shape[0], m.shape[0])
    np.testing.assert_allclose(got, ref, rtol=TOL, atol=TOL)


@EXAMPLES
@given(data=st.data())
def test_top_k_agrees_with_float64(api, data):
    m = data.draw(matrices())
    q = data.draw(matrices(rows=st.integers(1, 6), d=st.just(m.shape[1])))
    n = m.shape[0]
    k = data.draw(st.integers(1, n))
    normalized = data.draw(st.booleans())
    if normalized:
        m = ref_normalize(m).astype(np.float32)
    one = data.draw(st.booleans())
    qa = q[0] if one else q
    scores, indices = api.top_k(as_kind(qa, data.draw(KINDS)),
                                as_kind(m, data.draw(KINDS)), k,
                                normalized=normalized)
    assert scores.dtype == np.float32 and indices.dtype == np.int64
    ref = ref_cosines(q, m)
    if one:
        check_top_k(scores, indices, ref[0], k)
    else:
        assert scores.shape == indices.shape == (q.shape[0], k)
        for i in range(q.shape[0]):
            check_top_k(scores[i], indices[i], ref[i], k)


@pytest.mark.parametrize("shape", [(1000, 768), (40_000, 33), (3, 100_000)])
def test_big_calls_split_into_chunks_and_agree(api, shape):
    rng = np.random.default_rng(1)
    m = rng.standard_normal(shape).astype(np.float32)
    q = rng.standard_normal((5, shape[1])).astype(np.float32)
    ref = ref_cosines(q, m)
    before = offloop.stats()["chunks"]
    got = api.cosine_similarities(q, m)
    np.testing.assert_allclose(got, ref, rtol=TOL, atol=TOL)
    scores, indices = api.top_k(q, m, k=min(7, shape[0]))
    for i in range(5):
        check_top_k(scores[i], indices[i], ref[i], min(7, shape[0]))
    out = api.batch_normalize(m)
    np.testing.assert_allclose(out, ref_normalize(m), rtol=TOL, atol=1e-6)
    threads = offloop.stats()["threads"]
    if shape[0] >= 1000:  # split across every worker, several each
        assert offloop.stats()["chunks"] - before >= 3 * 4 * threads


def test_top_k_with_many_queries_splits_queries_too(api):
    rng = np.random.default_rng(2)
    m = rng.standard_normal((3000, 64)).astype(np.float32)
    q = rng.standard_normal((1500, 64)).astype(np.float32)
    scores, indices = api.top_k(q, m, k=5)
    ref = ref_cosines(q, m)
    for i in range(0, 1500, 97):
        check_top_k(scores[i], indices[i], ref[i], 5)


# ---------------------------------------------------------------- SIMD paths


@pytest.mark.parametrize("d", [1, 5, 8, 15, 16, 17, 31, 32, 33, 127, 768])
def test_every_simd_path_agrees_with_the_portable_one(api, isa, d):
    rng = np.random.default_rng(d)
    m = rng.standard_normal((257, d)).astype(np.float32)
    m[3] = 0
    m[7] = m[5]
    q = rng.standard_normal((9, d)).astype(np.float32)
    mu = ref_normalize(m).astype(np.float32)

    def run_all():
        return (
            api.cosine_similarity(q[0], m[1]),
            api.batch_normalize(m),
            api.cosine_similarities(q, m),
            api.top_k(q, m, k=10),
            api.top_k(q[0], mu, k=10, normalized=True),
            api.top_k(q, np.repeat(m, 40, axis=0), k=3),  # pool, chunks
        )

    got = run_all()
    prev = _core._set_isa("scalar")
    try:
        want = run_all()
    finally:
        _core._set_isa(prev)
    assert _core._isa() == isa
    assert got[0] == pytest.approx(want[0], rel=TOL, abs=TOL)
    np.testing.assert_allclose(got[1], want[1], rtol=TOL, atol=1e-6)
    np.testing.assert_allclose(got[2], want[2], rtol=TOL, atol=TOL)
    ref = ref_cosines(q, m)
    for i in range(9):
        check_top_k(got[3][0][i], got[3][1][i], ref[i], 10)
    check_top_k(got[4][0], got[4][1], ref_cosines(q[:1], mu)[0], 10)
    np.testing.assert_allclose(got[5][0], want[5][0], rtol=TOL, atol=TOL)


def test_set_isa_returns_the_previous_one_and_refuses_unknown_names():
    prev = _core._isa()
    assert _core._set_isa("scalar") == prev
    assert _core._isa() == "scalar"
    assert _core._set_isa(prev) == "scalar"
    with pytest.raises(ValueError, match="name must be"):
        _core._set_isa("sse9")
    with pytest.raises(TypeError):
        _core._set_isa(2)
    for name in {"scalar", "avx2", "avx512"} - set(ISAS):
        with pytest.raises(ValueError, match="cannot run"):
            _core._set_isa(name)
    assert _core._isa() == prev


# ---------------------------------------------------------------- semantics


def test_zero_vectors_score_zero_and_zero_rows_stay_zero(api):
    z = np.zeros(16, np.float32)
    a = np.ones(16, np.float32)
    assert api.cosine_similarity(z, a) == 0.0
    assert api.cosine_similarity(z, z) == 0.0
    x = np.stack([a, z, a * 2])
    out = api.batch_normalize(x)
    np.testing.assert_array_equal(out[1], 0)
    np.testing.assert_allclose(out[0], out[2])
    np.testing.assert_array_equal(api.cosine_similarities(z, x), 0)


def test_in_place_and_out(api):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 48)).astype(np.float32)
    ref = ref_normalize(x)
    y = x.copy()
    assert api.batch_normalize(y, out=y) is y
    np.testing.assert_allclose(y, ref, rtol=TOL, atol=1e-6)
    out = np.empty_like(x)
    assert api.batch_normalize(x, out=out) is out
    np.testing.assert_allclose(out, ref, rtol=TOL, atol=1e-6)
    mv = memoryview(np.zeros_like(x))
    assert api.batch_normalize(x, out=mv) is mv
    np.testing.assert_allclose(np.asarray(mv), ref, rtol=TOL, atol=1e-6)
    # A big one, in place, through the pool.
    big = rng.standard_normal((20_000, 96)).astype(np.float32)
    ref = ref_normalize(big)
    assert api.batch_normalize(big, out=big) is big
    np.testing.assert_allclose(big, ref, rtol=TOL, atol=1e-6)


def test_float64_input_is_converted_once_and_left_alone(api):
    x = np.random.default_rng(4).standard_normal((50, 8))
    before = x.copy()
    out = api.batch_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(out, ref_normalize(x), rtol=TOL, atol=1e-6)
    out2 = np.empty((50, 8), np.float32)
    assert api.batch_normalize(x, out=out2) is out2
    np.testing.assert_allclose(out2, out)


def test_array_array_and_sequences(api):
    a = array.array("f", [1.0, 2.0, 3.0])
    assert api.cosine_similarity(a, [1, 2, 3]) == pytest.approx(1.0)
    assert api.cosine_similarity((1.0, 0.0), [0.0, 1.0]) == 0.0
    s, i = api.top_k(a, [[1, 2, 3], [3, 2, 1], [-1, -2, -3]], k=3)
    assert i.tolist() == [0, 1, 2]
    assert s[0] == pytest.approx(1.0) and s[2] == pytest.approx(-1.0)


def test_ties_go_to_the_lower_index(api):
    m = np.tile(np.float32([[1, 0], [0, 1]]), (20, 1))  # rows alternate
    s, i = api.top_k(np.float32([1, 0]), m, k=20)
    assert i.tolist() == list(range(0, 40, 2))
    assert np.all(s == s[0])
    big = np.tile(m, (2000, 1))  # through the pool, many chunks
    s, i = api.top_k(np.float32([0, 1]), big, k=5)
    assert i.tolist() == [1, 3, 5, 7, 9]


def test_k_from_one_to_n(api):
    rng = np.random.default_rng(5)
    m = rng.standard_normal((30, 4)).astype(np.float32)
    q = rng.standard_normal(4).astype(np.float32)
    ref = ref_cosines(q[None], m)[0]
    s1, i1 = api.top_k(q, m, 1)
    assert i1.tolist() == [int(np.argmax(ref))]
    sn, i_n = api.top_k(q, m, k=30)
    check_top_k(sn, i_n, ref, 30)
    assert sorted(i_n.tolist()) == list(range(30))


def test_nan_and_inf_are_documented_and_never_crash(api):
    m = np.float32([[1, 0], [np.nan, 1], [0, 1], [np.inf, 0], [1, 1]])
    q = np.float32([1, 0.5])
    s, i = api.top_k(q, m, k=5)
    # NaN scores (the NaN row, the inf row) rank after every number,
    # lower index first among them.
    assert i.tolist()[3:] == [1, 3]
    assert np.isnan(s[3:]).all() and not np.isnan(s[:3]).any()
    # A NaN query: every score is NaN; rows 0..k-1 in order.
    s, i = api.top_k(np.float32([np.nan, 0]), m, k=3)
    assert i.tolist() == [0, 1, 2] and np.isnan(s).all()
    assert np.isnan(api.cosine_similarity(np.float32([np.nan, 1]), q))
    assert np.isnan(api.cosine_similarity(np.float32([np.inf, 1]), q))
    out = api.batch_normalize(m)
    assert np.isnan(out[1]).all()
    assert not np.isfinite(out[3]).all() or (out[3] == 0).all()
    np.testing.assert_allclose(out[4], [2**-0.5] * 2, rtol=TOL)
    sims = api.cosine_similarities(q, m)
    assert np.isnan(sims[[1, 3]]).all()


def test_results_are_new_arrays_the_caller_owns(api):
    m = np.eye(4, dtype=np.float32)
    s1, i1 = api.top_k(m, m, k=2)
    s2, i2 = api.top_k(m, m, k=2)
    assert s1.base is None and i1.base is None
    assert s1 is not s2 and i1 is not i2
    assert s1.flags.writeable and i1.flags.c_contiguous


def test_refcounts_of_arguments_are_unchanged(api):
    q = np.ones(8, np.float32)
    m = np.ones((100, 8), np.float32)
    big = np.ones((50_000, 8), np.float32)
    out = np.empty_like(big)
    before = [sys.getrefcount(o) for o in (q, m, big, out)]
    for _ in range(3):
        api.cosine_similarity(q, q)
        api.top_k(q, m, k=3)
        api.top_k(q, big, k=3)
        api.cosine_similarities(q, big)
        api.batch_normalize(big, out=out)
    gc.collect()
    assert [sys.getrefcount(o) for o in (q, m, big, out)] == before


# ---------------------------------------------------------------- dispatch


async def test_a_tiny_call_runs_inline_and_returns_a_done_future(loop):
    a = np.ones(768, np.float32)
    before = offloop.stats()
    fut = offloop.cosine_similarity(a, a)
    assert fut.done() and fut.get_loop() is loop
    assert await fut == pytest.approx(1.0)
    fut = offloop.top_k(a, np.ones((8, 768), np.float32), k=2)
    assert fut.done()
    await fut
    after = offloop.stats()
    assert after["inline"] - before["inline"] == 2
    assert after["submitted"] == before["submitted"]


async def test_a_big_call_goes_to_the_pool_in_chunks(loop):
    x = np.ones((100_000, 64), np.float32)
    before = offloop.stats()
    fut = offloop.batch_normalize(x, out=x)
    assert not fut.done()
    assert await fut is x
    after = offloop.stats()
    assert after["submitted"] - before["submitted"] == 1
    assert after["chunks"] - before["chunks"] >= 4 * after["threads"]
    assert np.allclose(x, 1 / 8)


async def test_a_very_long_cosine_goes_to_the_pool(loop):
    rng = np.random.default_rng(8)
    a = rng.random(1_000_000, dtype=np.float32)
    b = rng.random(1_000_000, dtype=np.float32)
    before = offloop.stats()["inline"]
    fut = offloop.cosine_similarity(a, b)
    assert not fut.done()
    got = await fut
    assert offloop.stats()["inline"] == before
    assert got == pytest.approx(ref_cosines(a[None], b[None])[0, 0],
                                rel=TOL)


def test_tiny_blocking_calls_run_on_the_calling_thread():
    before = offloop.stats()
    a = np.ones(4, np.float32)
    assert offloop.blocking.cosine_similarity(a, a) == pytest.approx(1.0)
    after = offloop.stats()
    assert after["inline"] - before["inline"] == 1
    assert after["submitted"] == before["submitted"]


async def test_stats_add_up_after_vector_calls(loop):
    a = np.ones((50_000, 16), np.float32)
    await asyncio.gather(offloop.cosine_similarity(a[0], a[1]),
                         offloop.top_k(a[0], a), offloop.batch_normalize(a),
                         offloop.cosine_similarities(a[:2], a))
    offloop.blocking.top_k(a[0], a)
    offloop.blocking.top_k(a[0], a[:3], k=1)
    with pytest.raises(ValueError):
        offloop.top_k(a[0], a, k=0)
    s = offloop.stats()
    assert s["queued"] == 0
    assert s["submitted"] == (s["completed"] + s["failed"] + s["cancelled"]
                              + s["dropped"] - s["inline"])


# ---------------------------------------------------------------- lifetime


async def test_a_job_holds_its_buffers_while_the_caller_drops_them(loop):
    rng = np.random.default_rng(6)
    m = rng.random((200_000, 64), dtype=np.float32) - np.float32(0.5)
    q = rng.random((3, 64), dtype=np.float32) - np.float32(0.5)
    ref = ref_cosines(q, m)
    futs = [offloop.top_k(q, m, k=10),
            offloop.top_k(memoryview(q), memoryview(m), k=10)]
    del m, q
    gc.collect()
    # Something else reuses freed memory meanwhile.
    junk = [np.full((1000, 64), np.nan, np.float32) for _ in range(50)]
    for scores, indices in await asyncio.gather(*futs):
        for i in range(3):
            check_top_k(scores[i], indices[i], ref[i], 10)
    del junk


async def test_an_exported_buffer_cannot_be_resized_while_a_job_runs(loop):
    q = array.array("f", [1.0] * 64)
    m = np.ones((200_000, 64), np.float32)
    fut = offloop.top_k(q, m, k=3)
    assert not fut.done()
    with pytest.raises(BufferError):
        q.append(2.0)  # the job holds q's buffer
    await fut
    q.append(2.0)  # released once the job ended


def test_blocking_call_holds_and_releases_buffers():
    q = array.array("f", [1.0] * 64)
    offloop.blocking.top_k(q, np.ones((100_000, 64), np.float32), k=3)
    q.append(2.0)


@pytest.mark.parametrize("d", [768, 1 << 20])  # inline, and on the pool
def test_blocking_pair_cosine_releases_both_buffers_on_every_path(d):
    a, b = array.array("f", [1.0] * d), array.array("f", [2.0] * d)
    before = offloop.stats()["completed"]
    assert offloop.blocking.cosine_similarity(a, b) == pytest.approx(1.0)
    assert offloop.stats()["completed"] == before + 1
    short = array.array("f", [1.0] * (d - 1))
    with pytest.raises(ValueError, match="same length"):
        offloop.blocking.cosine_similarity(a, short)
    with pytest.raises(ValueError, match="b must be 1-D"):
        offloop.blocking.cosine_similarity(a, np.ones((2, d), np.float32))
    with pytest.raises(TypeError, match="b must be"):
        offloop.blocking.cosine_similarity(a, "x")
    for buf in (a, b, short):
        buf.append(2.0)  # BufferError if a view were still held


# ---------------------------------------------------------------- cancel


async def _start_and_cancel(x, out, held_after):
    """Start batch_normalize on the pool; once `held_after` chunks have run
    and the workers wait at the start of their next, cancel it and let them
    go.  Return (chunks run in all, chunks run after the cancel)."""
    c0 = offloop.stats()["chunks"]
    _core._hold_normalize_chunks(held_after)
    try:
        fut = offloop.batch_normalize(x, out=out)
        async with asyncio.timeout(10):
            while offloop.stats()["chunks"] - c0 < held_after:
                await asyncio.sleep(0)
        fut.cancel()
        c1 = offloop.stats()["chunks"]
    finally:
        _core._hold_normalize_chunks(None)
    with pytest.raises(asyncio.CancelledError):
        await fut
    assert _testing.wait_idle(10)
    c2 = offloop.stats()["chunks"]
    return c2 - c0, c2 - c1


async def test_cancel_a_big_batch_normalize_midway(loop):
    rng = np.random.default_rng(7)
    x = rng.random((100_000, 768), dtype=np.float32) - np.float32(0.5)
    out = np.full_like(x, 7.0)
    ran, after_cancel = await _start_and_cancel(x, out, held_after=3)
    # A worker held at the gate had claimed its chunk before the cancel: it
    # runs that one, then stops, far from the ~1,200.
    threads = offloop.stats()["threads"]
    assert after_cancel <= threads
    assert ran <= 3 + threads
    # out: each row either normalized or untouched (documented), and
    # some of both.
    done = np.all(out != 7.0, axis=1)
    untouched = np.all(out == 7.0, axis=1)
    assert np.all(done | untouched)
    assert done.any() and untouched.any()
    some = np.flatnonzero(done)[:200]
    np.testing.assert_allclose(out[some], ref_normalize(x[some]),
                               rtol=TOL, atol=1e-6)
    # The workers are free again: a job using all of them completes.
    s, i = await offloop.top_k(x[0], x, k=1)
    assert i[0] == 0
    assert _testing.wait_idle(10)


async def test_cancel_a_queued_vector_job(loop):
    threads = offloop.stats()["threads"]
    before = offloop.stats()["chunks"]
    holders = [_testing.sleep(60) for _ in range(threads)]
    async with asyncio.timeout(10):
        while offloop.stats()["running"] < threads:
            await asyncio.sleep(0)
    x = np.ones((100_000, 16), np.float32)
    out = np.zeros_like(x)
    fut = offloop.batch_normalize(x, out=out)
    fut.cancel()  # every worker is held: the job is still queued
    with pytest.raises(asyncio.CancelledError):
        await fut
    for holder in holders:
        holder.cancel()
    await asyncio.gather(*holders, return_exceptions=True)
    assert _testing.wait_idle(10)
    assert offloop.stats()["chunks"] - before == threads  # the holders only
    assert not out.any()  # never started


# ---------------------------------------------------------------- bad input

F = np.ones((4, 3), np.float32)
V = np.ones(3, np.float32)
SHARED = np.ones((5, 3), np.float32)


def _bad_cases():
    huge = (ctypes.c_float * 1) * (2**59)  # never read: size checks only
    return [
        # (function, args, kwargs, exception, message naming the argument)
        ("cosine_similarity", (V.astype(np.int32), V), {}, TypeError,
         r"a must hold float32 \(or float64\) values, got buffer format"),
        ("cosine_similarity", (V, V.astype(np.float16)), {}, TypeError,
         r"b must hold float32"),
        ("top_k", (V, F.astype(np.int64)), {}, TypeError, "m must hold"),
        ("batch_normalize", (F.astype(np.complex64),), {}, TypeError,
         "x must hold"),
        ("cosine_similarities", (V, b"abc"), {}, TypeError, "m must hold"),
        ("cosine_similarity", (None, V), {}, TypeError,
         "a must be a float32 array or buffer, or a sequence of numbers, "
         "not NoneType"),
        ("cosine_similarity", ("abc", V), {}, TypeError, "a must be"),
        ("cosine_similarity", (V, ["1", "2", "3"]), {}, TypeError,
         "b must hold float32 .* got dtype <U1"),
        ("cosine_similarity", (V, [1, None, 2]), {}, TypeError,
         "b must hold .* got dtype object"),
        ("top_k", (V, [[1, 2, 3], [1, 2]]), {}, ValueError,
         "m must be a float32 array or a rectangular sequence"),
        ("top_k", (V, np.ones((4, 6), np.float32)[:, ::2]), {}, ValueError,
         r"m must be C-contiguous"),
        ("cosine_similarity", (np.ones(6, np.float32)[::2], V), {},
         ValueError, "a must be C-contiguous"),
        ("batch_normalize", (np.ones((3, 4), np.float64).T,), {},
         ValueError, "x must be C-contiguous"),
        ("cosine_similarity", (F, V), {}, ValueError,
         "a must be 1-D, got 2 dimensions"),
        ("batch_normalize", (V,), {}, ValueError, "x must be 2-D"),
        ("top_k", (V, V), {}, ValueError, "m must be 2-D"),
        ("cosine_similarities", (np.ones((2, 2, 3), np.float32), F), {},
         ValueError, "q must be 1-D or 2-D, got 3 dimensions"),
        ("cosine_similarities", (np.float32(1.0), F), {}, ValueError,
         "q must be 1-D or 2-D, got 0"),
        ("cosine_similarity", (V, np.ones(4, np.float32)), {}, ValueError,
         "a and b must have the same length, got 3 and 4"),
        ("top_k", (np.ones(4, np.float32), F), {}, ValueError,
         r"q and m must have the same number of dimensions .* 4 and 3"),
        ("cosine_similarity", (np.ones(0, np.float32),) * 2, {}, ValueError,
         "a must not be empty"),
        ("batch_normalize", (np.ones((0, 3), np.float32),), {}, ValueError,
         "x must not be empty"),
        ("top_k", (V, np.ones((0, 3), np.float32)), {}, ValueError,
         "m must not be empty"),
        ("top_k", (np.ones((3, 0), np.float32), F), {}, ValueError,
         "q must not be empty"),
        ("cosine_similarity", ([], []), {}, ValueError,
         "a must not be empty"),
        ("top_k", (V, F), {"k": 0}, ValueError,
         r"k must be between 1 and the number of rows of m \(4\), got 0"),
        ("top_k", (V, F, 5), {}, ValueError, r"k must be .*got 5"),
        ("top_k", (V, F), {"k": -1}, ValueError, "k must be"),
        ("top_k", (V, F), {"k": 2**70}, ValueError, "k must be"),
        ("top_k", (V, F[:3]), {}, ValueError, r"\(3\), got 10"),
        ("top_k", (V, F), {"k": 2.0}, TypeError, "k must be an int"),
        ("top_k", (V, F), {"k": True}, TypeError, "k must be an int"),
        ("batch_normalize", (F,), {"out": np.ones((4, 4), np.float32)},
         ValueError, r"out must have shape \(4, 3\)"),
        ("batch_normalize", (F,), {"out": np.ones((4, 3))}, TypeError,
         "out must be a float32 array"),
        ("batch_normalize", (F,), {"out": [[0.0] * 3] * 4}, TypeError,
         "out must be a writable float32 array, not list"),
        ("batch_normalize", (F,), {"out": np.ones(12, np.float32)[::1]
                                   .reshape(4, 3).T.copy().T}, ValueError,
         "out must be C-contiguous"),
        ("batch_normalize", (F,), {"out": bytes(48)}, ValueError,
         "out must be a writable buffer"),
        ("batch_normalize", (SHARED[:4],), {"out": SHARED[1:]}, ValueError,
         "out overlaps x without being x"),
        ("cosine_similarities", (np.ones((16, 1), np.float32),
                                 huge.from_address(V.ctypes.data)), {},
         ValueError, "q and m are too big: Q x N scores would need more"),
        ("top_k", (np.ones((16, 1), np.float32),
                   huge.from_address(V.ctypes.data)), {"k": 2**59},
         ValueError, "q and k are too big"),
        ("top_k", (V, F), {"kk": 3}, TypeError,
         "unexpected keyword argument 'kk'"),
        ("top_k", (V,), {}, TypeError, "missing required argument 'm'"),
        ("top_k", (V, F, 3, True), {}, TypeError,
         "at most 3 positional arguments"),
        ("cosine_similarity", (V,), {"a": V}, TypeError,
         "multiple values for argument 'a'"),
    ]


def _readonly():
    x = np.ones((4, 3), np.float32)
    x.flags.writeable = False
    return x


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input_raises_at_the_call_naming_the_argument(api, case):
    name, args, kwargs, exc, message = _bad_cases()[case]
    before = offloop.stats()["submitted"]
    with pytest.raises(exc, match=message) as info:
        getattr(api, name)(*args, **kwargs)
    assert str(info.value).startswith(name + "()")
    assert offloop.stats()["submitted"] == before  # nothing queued


def test_read_only_out_is_refused(api):
    with pytest.raises(ValueError, match="out must be a writable buffer"):
        api.batch_normalize(F, out=_readonly())


def test_a_read_only_input_is_fine(api):
    x = _readonly()
    assert api.cosine_similarity(x[0], x[1]) == pytest.approx(1.0)
    assert api.batch_normalize(x).shape == (4, 3)


async def test_no_running_loop_is_a_runtime_error():
    def outside():
        with pytest.raises(RuntimeError, match="no running event loop"):
            offloop.top_k(V, F, k=1)

    await asyncio.to_thread(outside)


def test_docstrings_and_names():
    for name in NAMES:
        fn = getattr(offloop, name)
        twin = getattr(offloop.blocking, name)
        assert name in offloop.__all__ and name in offloop.blocking.__all__
        for f in (fn, twin):
            doc = f.__doc__
            for section in ("Parameters", "Returns", "Raises"):
                assert section in doc, (name, section)
            assert "converted" in doc and "float64" in doc
        assert "Examples" in fn.__doc__
    assert "NaN" in offloop.top_k.__doc__
    assert "lower index" in offloop.top_k.__doc__
    assert "partial" in offloop.batch_normalize.__doc__ or \
        "untouched" in offloop.batch_normalize.__doc__
