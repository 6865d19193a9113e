"""Integer arguments take what operator.index() takes (issue 11, item 4).

numpy integers are what users have in hand (``k=len(ids) // 2`` on an
array, a row count from ``x.shape``); any object with ``__index__``
counts as an int.  bool stays refused where it was, and floats, strings
and numpy floats raise TypeError naming the argument, before anything is
queued.  Every call is checked awaitable (on asyncio and uvloop) and
blocking.  native_ext's integer arguments are checked in
test_examples.py, where it is built.
"""

import numpy as np
import pytest

import offloop
from offloop import _testing


class Index:
    """An int only through __index__ (no __int__, no __float__)."""

    def __init__(self, value):
        self.value = value

    def __index__(self):
        return self.value


class BadIndex:
    """__index__ that returns a float: operator.index() refuses it."""

    def __index__(self):
        return 2.0  # noqa: PLE0305  (the point)


def ints(n):
    return [np.int64(n), np.int32(n), np.uint8(n), Index(n)]


INT_IDS = ["int64", "int32", "uint8", "__index__"]
NOT_INTS = [2.0, "2", np.float32(2), np.float64(2), True, np.True_,
            BadIndex(), None]
NOT_INT_IDS = ["float", "str", "float32", "float64", "bool", "np.bool",
               "bad __index__", "None"]

M = np.eye(6, dtype=np.float32)
Q = M[0] + np.float32(0.5) * M[1] + np.float32(0.25) * M[2]


def test_the_index_objects_are_what_operator_index_takes():
    import operator

    assert [operator.index(v) for v in ints(3)] == [3, 3, 3, 3]
    for bad in (2.0, "2", np.float32(2), np.True_, BadIndex()):
        with pytest.raises(TypeError):
            operator.index(bad)


# ---- top_k's k -------------------------------------------------------------


@pytest.mark.parametrize("k", ints(3), ids=INT_IDS)
async def test_top_k_takes_an_index_k(loop, k):
    s, i = await offloop.top_k(Q, M, k=k)
    assert i.tolist() == [0, 1, 2]
    s2, i2 = await offloop.top_k(Q, M, k)  # positional too
    assert i2.tolist() == [0, 1, 2] and np.array_equal(s, s2)
    _, i3 = await offloop.top_k(Q[None], M, k=k, normalized=True)
    assert i3.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("k", ints(3), ids=INT_IDS)
def test_blocking_top_k_takes_an_index_k(k):
    _, i = offloop.blocking.top_k(Q, M, k=k)
    assert i.tolist() == [0, 1, 2]


@pytest.mark.parametrize("k", NOT_INTS[:-1], ids=NOT_INT_IDS[:-1])
async def test_top_k_refuses_a_k_that_is_not_an_int(loop, k):
    before = offloop.stats()["submitted"]
    with pytest.raises(TypeError, match=r"top_k\(\): k must be an int"):
        offloop.top_k(Q, M, k=k)
    with pytest.raises(TypeError, match=r"top_k\(\): k must be an int"):
        offloop.blocking.top_k(Q, M, k=k)
    assert offloop.stats()["submitted"] == before


@pytest.mark.parametrize("k", [np.int64(0), np.int64(7), Index(-1),
                               np.uint64(2**64 - 1), Index(2**70)],
                         ids=["0", "above rows", "-1", "uint64 max", "2**70"])
async def test_top_k_range_applies_to_index_k(loop, k):
    with pytest.raises(ValueError, match="k must be between 1 and"):
        offloop.top_k(Q, M, k=k)
    with pytest.raises(ValueError, match="k must be between 1 and"):
        offloop.blocking.top_k(Q, M, k=k)


async def test_an_index_that_raises_its_own_error_keeps_it(loop):
    class Broken:
        def __index__(self):
            raise ZeroDivisionError("from __index__")

    with pytest.raises(ZeroDivisionError, match="from __index__"):
        offloop.top_k(Q, M, k=Broken())


# ---- configure(threads=, max_queue=) --------------------------------------


@pytest.mark.parametrize("n", ints(2), ids=INT_IDS)
def test_configure_takes_index_counts(n):
    try:
        offloop.configure(threads=n, max_queue=n, max_batch=n)
        s = offloop.stats()
        assert (s["threads"], s["max_queue"], s["max_batch"]) == (2, 2, 2)
        assert _testing.blocking.spin(5) == _testing.spin_reference(5)
        offloop.configure(n, None)  # positional
        assert offloop.stats()["threads"] == 2
    finally:
        offloop.configure()


@pytest.mark.parametrize("bad", NOT_INTS[:-1], ids=NOT_INT_IDS[:-1])
@pytest.mark.parametrize("name", ["threads", "max_queue", "max_batch"])
def test_configure_refuses_counts_that_are_not_ints(name, bad):
    before = offloop.stats()
    with pytest.raises(TypeError, match=f"configure\\(\\): {name} must be"):
        offloop.configure(**{name: bad})
    after = offloop.stats()
    keys = ("threads", "max_queue", "max_batch")
    assert [after[k] for k in keys] == [before[k] for k in keys]


def test_configure_range_applies_to_index_counts():
    with pytest.raises(ValueError, match="threads"):
        offloop.configure(threads=np.int64(0))
    with pytest.raises(ValueError, match="max_queue"):
        offloop.configure(max_queue=Index(-3))
    with pytest.raises(ValueError, match="threads must be at most"):
        offloop.configure(threads=np.uint16(5000))
    with pytest.raises(ValueError, match="max_batch"):
        offloop.configure(max_batch=np.int8(0))


# ---- the _testing jobs ------------------------------------------------------


@pytest.mark.parametrize("n", ints(200), ids=INT_IDS)
async def test_spin_takes_an_index_count(loop, n):
    ref = _testing.spin_reference(200)
    assert _testing.spin_reference(n) == ref
    assert await _testing.spin(n) == ref
    assert _testing.blocking.spin(n) == ref


@pytest.mark.parametrize("bad", NOT_INTS, ids=NOT_INT_IDS)
async def test_spin_refuses_a_count_that_is_not_an_int(loop, bad):
    before = offloop.stats()["submitted"]
    for call in (_testing.spin, _testing.blocking.spin):
        with pytest.raises(TypeError, match="spin\\(\\): iterations must"):
            call(bad)
    assert offloop.stats()["submitted"] == before


@pytest.mark.parametrize("n", ints(0), ids=INT_IDS)
async def test_sleep_takes_an_index_number_of_seconds(loop, n):
    assert await _testing.sleep(n) is None
    assert _testing.blocking.sleep(n) is None


@pytest.mark.parametrize("bad", ["0", True, np.True_, None],
                         ids=["str", "bool", "np.bool", "None"])
async def test_sleep_still_refuses_what_is_not_a_number(loop, bad):
    for call in (_testing.sleep, _testing.blocking.sleep):
        with pytest.raises(TypeError, match="seconds must be a number"):
            call(bad)
