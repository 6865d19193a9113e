"""float32 buffers at addresses that are not a multiple of 4 bytes (a view
at a byte offset: np.frombuffer(..., offset=1), what Dask hands a task).
The kernels load whole floats, so such inputs are copied to aligned memory
at the call (a misaligned load is undefined behaviour: UBSan in CI reports
it); an unaligned out= cannot be written in place and is refused."""

import numpy as np
import pytest

import offloop


def unaligned(a):
    """A float32 copy of ``a`` whose data starts one byte past alignment."""
    raw = bytearray(a.nbytes + 1)
    view = np.frombuffer(raw, dtype=np.float32, offset=1,
                         count=a.size).reshape(a.shape)
    view[...] = a
    assert view.ctypes.data % 4 == 1 and not view.flags.aligned
    return view


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    return (rng.standard_normal((5_000, 64), dtype=np.float32),
            rng.standard_normal((3, 64), dtype=np.float32))


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


async def test_unaligned_inputs_give_the_aligned_results(loop, data):
    m, q = data
    um, uq = unaligned(m), unaligned(q)
    calls = (lambda a, b: offloop.top_k(a, b, k=7),
             lambda a, b: offloop.cosine_similarities(a, b))
    for call in calls:
        for (a, b), (ra, rb) in (((uq, m), (q, m)), ((q, um), (q, m)),
                                 ((uq, um), (q, m)),
                                 ((uq[0], um), (q[0], m))):
            got, want = await call(a, b), await call(ra, rb)
            for g, w in zip(_as_tuple(got), _as_tuple(want)):
                np.testing.assert_array_equal(g, w)
    assert await offloop.cosine_similarity(uq[0], um[1]) == (
        await offloop.cosine_similarity(q[0], m[1]))
    np.testing.assert_array_equal(
        await offloop.batch_normalize(um), await offloop.batch_normalize(m))


def test_unaligned_inputs_through_the_blocking_twins(data):
    m, q = data
    np.testing.assert_array_equal(
        offloop.blocking.top_k(unaligned(q), unaligned(m), k=4)[1],
        offloop.blocking.top_k(q, m, k=4)[1])


def test_an_unaligned_out_is_refused_at_the_call(data):
    m, _ = data
    with pytest.raises(ValueError, match="out must be aligned"):
        offloop.blocking.batch_normalize(m, out=unaligned(m))
