"""Quantized storage: offloop.quantize (bfloat16, int8), QuantizedMatrix in
top_k and cosine_similarities (awaitable and blocking), top_k(rerank=),
bad input, NaN/inf rows, numpy save/load (memory-mapped, read-only), and
coalescing of one-query calls on one quantized matrix.  Every ISA the CPU
runs is checked against the portable path by forcing it."""

import asyncio

import numpy as np
import pytest

import offloop
from offloop import _core, blocking

from workers import held_workers

N, D = 4_000, 96  # big enough to go to the pool, small to stay quick
DTYPES = ["bfloat16", "int8"]



@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    m = rng.standard_normal((N, D), dtype=np.float32)
    m[:, ::2] += 0.2  # cosines spread over (-1, 1)
    q = rng.standard_normal((24, D), dtype=np.float32)
    return m, q


def decoded(qm):
    """The unit rows a QuantizedMatrix stands for, in float64."""
    if qm.dtype == "bfloat16":
        return (qm.codes.astype(np.uint32) << 16).view(np.float32) \
            .astype(np.float64)
    return qm.codes.astype(np.float64) * qm.scales[:, None]


def ref_scores(q, qm):
    q = np.atleast_2d(q).astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q @ decoded(qm).T


# ---- quantize --------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_codes_unit_rows(data, dtype):
    m, _ = data
    qm = blocking.quantize(m, dtype)
    assert isinstance(qm, offloop.QuantizedMatrix)
    assert qm.shape == (N, D) and qm.dtype == dtype
    unit = m / np.linalg.norm(m.astype(np.float64), axis=1, keepdims=True)
    err = np.abs(decoded(qm) - unit)
    if dtype == "bfloat16":
        assert qm.codes.dtype == np.uint16 and qm.scales is None
        assert qm.nbytes == N * D * 2
        assert (err <= np.abs(unit) / 256 + 1e-30).all()
    else:
        assert qm.codes.dtype == np.int8 and qm.scales.dtype == np.float32
        assert qm.nbytes == N * D + N * 4
        assert np.abs(qm.codes).max() == 127
        assert (err <= qm.scales[:, None] * 0.5001).all()


@pytest.mark.parametrize("dtype", DTYPES)
async def test_quantize_awaitable_equals_blocking_and_is_chunked(loop, data,
                                                                 dtype):
    m, _ = data
    big = np.tile(m, (8, 1))  # several chunks on every worker
    before = offloop.stats()
    qm = await offloop.quantize(big, dtype)
    assert delta(before, "submitted")[0] == 1
    assert delta(before, "chunks")[0] >= 2 * offloop.stats()["threads"]
    ref = blocking.quantize(big, dtype)
    np.testing.assert_array_equal(qm.codes, ref.codes)
    if dtype == "int8":
        np.testing.assert_array_equal(qm.scales, ref.scales)


def test_quantize_converts_float64_and_lists(data):
    m, _ = data
    a = blocking.quantize(m[:5].astype(np.float64), "int8")
    b = blocking.quantize(m[:5].tolist(), "int8")
    np.testing.assert_array_equal(a.codes, b.codes)


@pytest.mark.parametrize("args, error, words", [
    (("float16",), ValueError, "dtype"),
    (("INT8",), ValueError, "dtype"),
    ((8,), TypeError, "dtype"),
    ((None,), TypeError, "dtype"),
])
def test_quantize_bad_dtype(data, args, error, words):
    m, _ = data
    before = offloop.stats()["submitted"]
    for fn in (offloop.quantize, blocking.quantize):
        with pytest.raises(error, match=words):
            fn(m, *args)
    assert offloop.stats()["submitted"] == before


@pytest.mark.parametrize("m, error", [
    (np.zeros((3,), np.float32), ValueError),
    (np.zeros((0, 4), np.float32), ValueError),
    (np.zeros((2, 2, 2), np.float32), ValueError),
    ("abc", TypeError),
    (object(), TypeError),
])
def test_quantize_bad_matrix(m, error):
    with pytest.raises(error, match="m"):
        blocking.quantize(m, "int8")


# ---- scans on every ISA against the portable path --------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_scores_match_reference_on_every_isa(data, isa, dtype):
    m, q = data
    qm = blocking.quantize(m, dtype)
    ref = ref_scores(q, qm)
    for nq in (1, 5, 24):
        got = blocking.cosine_similarities(q[:nq], qm)
        np.testing.assert_array_less(np.abs(got - ref[:nq]),
                                     score_bound(q[:nq], qm))
    one = blocking.cosine_similarities(q[0], qm)
    assert one.shape == (N,)
    np.testing.assert_array_less(np.abs(one - ref[0]),
                                 score_bound(q[:1], qm)[0])


def score_bound(q, qm):
    """How far each score (nq x N) may be from ref_scores: float
    rounding, plus, on the AVX2 one-query int8 path, the query rounded to
    16-bit integers (at most half of max|q| / 32767 per element, times
    the decoded row)."""
    q = q.astype(np.float64)
    unit_max = np.abs(q).max(axis=1) / np.linalg.norm(q, axis=1)
    rounding = np.outer(unit_max, np.abs(decoded(qm)).sum(axis=1)) / 65534
    return 2e-6 + (rounding if qm.dtype == "int8" else 0.0 * rounding)


@pytest.mark.parametrize("d", [768, 4096, 4112])
def test_loaded_int8_codes_at_minus_128_scan_exactly(isa, d):
    """quantize never writes -128, but codes loaded from a file may: every
    ISA scores them like the reference (AVX2's integer one-query scan
    sizes its lanes for them)."""
    rng = np.random.default_rng(d)
    codes = np.full((6, d), -128, np.int8)
    codes[1::2] = rng.integers(-128, 128, (3, d), dtype=np.int8)
    qm = offloop.QuantizedMatrix(codes, np.full(6, 0.01, np.float32))
    q = np.abs(rng.standard_normal((2, d))).astype(np.float32)
    q[0] = 1.0  # every element at the query's largest integer
    ref = ref_scores(q, qm)
    for nq in (1, 2):
        got = blocking.cosine_similarities(q[:nq], qm)
        np.testing.assert_array_less(np.abs(got - ref[:nq]),
                                     score_bound(q[:nq], qm))


@pytest.mark.parametrize("dtype", DTYPES)
def test_top_k_matches_portable_path(data, isa, dtype):
    m, q = data
    qm = blocking.quantize(m, dtype)
    prev = _core._set_isa("scalar")
    try:
        ref_s, ref_i = blocking.top_k(q, qm, 10)
    finally:
        _core._set_isa(prev)
    s, i = blocking.top_k(q, qm, 10)
    # Both within score_bound of the exact scores of their rows.
    exact = ref_scores(q, qm)
    for got, idx in ((s, i), (ref_s, ref_i)):
        np.testing.assert_array_less(
            np.abs(got - np.take_along_axis(exact, idx, axis=1)),
            np.take_along_axis(score_bound(q, qm), idx, axis=1))
    # Indices agree except where float rounding swaps near-equal scores.
    assert np.mean(i == ref_i) > 0.95
    sims = blocking.cosine_similarities(q, qm)
    np.testing.assert_allclose(
        s, np.take_along_axis(sims, i, axis=1), atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype, min_recall", [("bfloat16", 0.97),
                                               ("int8", 0.9)])
async def test_recall_and_rerank_exact(loop, data, dtype, min_recall):
    m, q = data
    qm = await offloop.quantize(m, dtype)
    exact_s, exact_i = blocking.top_k(q, m, 10)
    _, approx_i = await offloop.top_k(q, qm, 10)
    recall = np.mean([len(set(a) & set(b)) / 10
                      for a, b in zip(approx_i, exact_i)])
    assert recall >= min_recall
    s, i = await offloop.top_k(q, qm, 10, rerank=m)
    np.testing.assert_array_equal(i, exact_i)
    np.testing.assert_allclose(s, exact_s, rtol=1e-5, atol=1e-6)
    s1, i1 = blocking.top_k(q[3], qm, k=10, rerank=m)
    np.testing.assert_array_equal(i1, exact_i[3])
    # k close to n: every row is a candidate.
    s, i = blocking.top_k(q[:2], qm, N - 1, rerank=m)
    np.testing.assert_array_equal(i, blocking.top_k(q[:2], m, N - 1)[1])


def test_save_load_mmap_read_only_everything(data, tmp_path):
    m, q = data
    qm = blocking.quantize(m, "int8")
    np.savez(tmp_path / "qm.npz", **qm.arrays())
    again = offloop.QuantizedMatrix(**np.load(tmp_path / "qm.npz"))
    np.testing.assert_array_equal(again.codes, qm.codes)
    np.save(tmp_path / "codes.npy", qm.codes)
    np.save(tmp_path / "scales.npy", qm.scales)
    np.save(tmp_path / "m.npy", m)
    np.save(tmp_path / "q.npy", q)
    mapped = offloop.QuantizedMatrix(
        np.load(tmp_path / "codes.npy", mmap_mode="r"),
        np.load(tmp_path / "scales.npy", mmap_mode="r"))
    m_ro = np.load(tmp_path / "m.npy", mmap_mode="r")
    q_ro = np.load(tmp_path / "q.npy", mmap_mode="r")
    assert not mapped.codes.flags.writeable and not m_ro.flags.writeable
    s, i = blocking.top_k(q_ro, mapped, 10, rerank=m_ro)
    ref_s, ref_i = blocking.top_k(q, qm, 10, rerank=m)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_array_equal(s, ref_s)
    np.testing.assert_array_equal(blocking.cosine_similarities(q_ro, mapped),
                                  blocking.cosine_similarities(q, qm))
    # Read-only float32 inputs everywhere else too.
    np.testing.assert_array_equal(blocking.top_k(q_ro, m_ro, 5)[1],
                                  blocking.top_k(q, m, 5)[1])
    bf = blocking.quantize(m_ro, "bfloat16")
    np.savez(tmp_path / "bf.npz", **bf.arrays())
    bf2 = offloop.QuantizedMatrix(**np.load(tmp_path / "bf.npz"))
    assert bf2.dtype == "bfloat16" and bf2.scales is None


# ---- bad input: named, nothing queued ---------------------------------------

@pytest.fixture(scope="module")
def qms(data):
    m, _ = data
    return {dt: blocking.quantize(m, dt) for dt in DTYPES}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("call, error, words", [
    (lambda f, qm, m, q: f.top_k(q[0, :50], qm, 3), ValueError,
     "q and m .* dimensions"),
    (lambda f, qm, m, q: f.cosine_similarities(q[:, 1:].copy(), qm), ValueError,
     "q and m .* dimensions"),
    (lambda f, qm, m, q: f.top_k(q[0], qm, 3, rerank=m[1:]), ValueError,
     "rerank must have m's shape"),
    (lambda f, qm, m, q: f.top_k(q[0], qm, 3, rerank=m[:, 1:].copy()),
     ValueError, "rerank must have m's shape"),
    (lambda f, qm, m, q: f.top_k(q[0], qm, 3, rerank=m[0]), ValueError,
     "rerank must have m's shape"),
    (lambda f, qm, m, q: f.top_k(q[0], qm, 3, rerank="x"), TypeError,
     "rerank"),
    (lambda f, qm, m, q: f.top_k(q[0], m, 3, rerank=m), ValueError,
     "rerank= needs m to be a QuantizedMatrix"),
    (lambda f, qm, m, q: f.top_k(q[0], qm, 0), ValueError, "k must"),
    (lambda f, qm, m, q: f.top_k(q[0], qm, N + 1), ValueError, "k must"),
])
async def test_bad_input_named_nothing_queued(loop, data, qms, dtype, call,
                                              error, words):
    m, q = data
    before = offloop.stats()
    for f in (offloop, blocking):
        with pytest.raises(error, match=words):
            call(f, qms[dtype], m, q)
    after = offloop.stats()
    assert after["submitted"] == before["submitted"]
    assert after["inline"] == before["inline"]


def test_bad_quantized_matrix_arrays(data):
    m, _ = data
    with pytest.raises(TypeError, match="codes"):
        offloop.QuantizedMatrix(m)
    with pytest.raises(TypeError, match="scales"):
        offloop.QuantizedMatrix(np.zeros((3, 4), np.int8))
    with pytest.raises(ValueError, match="scales"):
        offloop.QuantizedMatrix(np.zeros((3, 4), np.int8),
                                np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="scales must be None"):
        offloop.QuantizedMatrix(np.zeros((3, 4), np.uint16),
                                np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        offloop.QuantizedMatrix(np.zeros((4, 6), np.uint16)[:, ::2])
    with pytest.raises(ValueError, match="2-D"):
        offloop.QuantizedMatrix(np.zeros(4, np.uint16))


# ---- non-finite and zero queries ------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_one_query_scores_nan_on_every_isa(data, isa, dtype,
                                                        bad):
    """A one-query scan converts the query once on AVX2 (int8 to 16-bit
    integers, bfloat16 reordered); a query the conversion refuses takes
    the float path and scores NaN everywhere, as the portable path does;
    a zero query scores 0."""
    m, q = data
    qm = blocking.quantize(m, dtype)
    one = q[0].copy()
    one[5] = bad
    assert np.isnan(blocking.cosine_similarities(one, qm)).all()
    scores, _ = blocking.top_k(one, qm, 3)
    assert np.isnan(scores).all()
    zero = np.zeros_like(one)
    assert (blocking.cosine_similarities(zero, qm) == 0).all()


# ---- NaN and inf rows -------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_bad_row_scores_nan_and_never_changes_the_others(data, isa, dtype,
                                                           bad):
    m, q = data
    clean = blocking.quantize(m, dtype)
    dirty_m = m.copy()
    dirty_m[17, 5] = bad
    dirty = blocking.quantize(dirty_m, dtype)
    others = np.arange(N) != 17
    np.testing.assert_array_equal(dirty.codes[others], clean.codes[others])
    sims = blocking.cosine_similarities(q, dirty)
    assert np.isnan(sims[:, 17]).all()
    np.testing.assert_array_equal(sims[:, others],
                                  blocking.cosine_similarities(q, clean)[:, others])
    # top_k: the bad row is ranked after every number; the others as before.
    s, i = blocking.top_k(q, dirty, 10)
    cs, ci = blocking.top_k(q, clean, 10)
    mask = ci != 17
    assert 17 not in i
    np.testing.assert_array_equal(i[:, :9], ci[mask].reshape(24, -1)[:, :9]
                                  if (~mask).any() else ci[:, :9])
    s, i = blocking.top_k(q[0], dirty, N)
    assert i[-1] == 17 and np.isnan(s[-1]) and not np.isnan(s[:-1]).any()
    # Re-ranked against the dirty float32 rows: the same.
    s, i = blocking.top_k(q, dirty, 10, rerank=dirty_m)
    assert 17 not in i


# ---- coalescing --------------------------------------------------------------

def delta(before, *keys):
    after = offloop.stats()
    return tuple(after[k] - before[k] for k in keys)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rerank", [False, True])
async def test_twenty_one_query_calls_on_a_quantized_matrix_coalesce(
        loop, data, qms, dtype, rerank):
    m, q = data
    qm = qms[dtype]
    kw = {"rerank": m} if rerank else {}
    before = offloop.stats()
    with held_workers():
        futs = [offloop.top_k(q[i], qm, k=10, **kw) for i in range(20)]
    results = await asyncio.gather(*futs)
    assert delta(before, "batches", "batched") == (1, 20)
    ref_s, ref_i = blocking.top_k(q[:20], qm, k=10, **kw)
    for j, (s, i) in enumerate(results):
        np.testing.assert_array_equal(i, ref_i[j])
        np.testing.assert_array_equal(s, ref_s[j])


async def test_quantized_cosine_similarities_coalesce(loop, data, qms):
    m, q = data
    before = offloop.stats()
    with held_workers():
        futs = [offloop.cosine_similarities(q[i], qms["int8"])
                for i in range(20)]
    results = await asyncio.gather(*futs)
    assert delta(before, "batches", "batched") == (1, 20)
    ref = blocking.cosine_similarities(q[:20], qms["int8"])
    for j, s in enumerate(results):
        np.testing.assert_array_equal(s, ref[j])


async def test_codes_rerank_and_float32_never_mix(loop, data, qms):
    m, q = data
    m2 = m.copy()
    before = offloop.stats()
    with held_workers():
        futs = [offloop.top_k(q[0], qms["int8"], k=10),
                offloop.top_k(q[1], qms["bfloat16"], k=10),
                offloop.top_k(q[2], m, k=10),
                offloop.top_k(q[3], qms["int8"], k=10, rerank=m),
                offloop.top_k(q[4], qms["int8"], k=10, rerank=m2)]
    results = await asyncio.gather(*futs)
    assert delta(before, "batches") == (0,)
    np.testing.assert_array_equal(results[3][1], blocking.top_k(q[3], m, 10)[1])
    np.testing.assert_array_equal(results[4][1], blocking.top_k(q[4], m, 10)[1])
    np.testing.assert_array_equal(
        results[0][1], blocking.top_k(q[0], qms["int8"], 10)[1])
