"""Fuzzing: hypothesis over every public function's
arguments.  Each call gives a correct result or raises TypeError or
ValueError at the call (the documented errors); never a crash, a hang or
another exception.

Examples are drawn from a fixed seed (derandomize) so that the default run
is repeatable; OFFLOOP_FUZZ_RANDOM=1 explores fresh examples and
OFFLOOP_FUZZ_EXAMPLES scales their number.  Every awaited call has a
deadline.
"""

import array
import asyncio
import functools
import math
import operator
import os

import offloop
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from offloop import _testing

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None

try:
    import numpy
    from hypothesis.extra import numpy as hnp
except ImportError:  # pragma: no cover - numpy comes with the kernels
    numpy = hnp = None

EXAMPLES = int(os.environ.get("OFFLOOP_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("OFFLOOP_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture,
                           HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)
CALL_DEADLINE = 30  # seconds for one awaited call

KERNELS = hasattr(offloop, "top_k") and numpy is not None
needs_kernels = pytest.mark.skipif(
    not KERNELS, reason="the vector kernels (offloop.top_k) are not there "
    "yet")

LOOP_KINDS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param("uvloop", id="uvloop", marks=pytest.mark.skipif(
        uvloop is None, reason="uvloop is not installed")),
]


@pytest.fixture(params=LOOP_KINDS)
def ev(request):
    """A loop of each kind (not running); calls go through `call_on`."""
    loop = (uvloop.new_event_loop() if request.param == "uvloop"
            else asyncio.new_event_loop())
    errors = []
    loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
    yield loop
    loop.close()
    assert not errors, errors


def outcome(call):
    """("ok", value) or ("exc", exception) of call()."""
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - compared by the caller
        return ("exc", exc)


def call_on(loop, fn, /, *args, **kwargs):
    """fn(*args, **kwargs) on `loop`, awaited with a deadline.  An error at
    the call propagates as is; the future's result or exception is
    returned or raised."""
    async def main():
        fut = fn(*args, **kwargs)
        assert isinstance(fut, asyncio.Future), fut
        assert fut.get_loop() is asyncio.get_running_loop()
        async with asyncio.timeout(CALL_DEADLINE):
            return await fut

    return loop.run_until_complete(main())


def same_outcome(a, b):
    if a[0] != b[0]:
        return False
    if a[0] == "ok":
        return a[1] == b[1] or (a[1] != a[1] and b[1] != b[1])  # nan
    return type(a[1]) is type(b[1]) and str(a[1]) == str(b[1])


def assert_documented_error(exc):
    assert isinstance(exc, (TypeError, ValueError)), repr(exc)
    assert str(exc), "an error without a message"


# ---- offloop.run -------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8)


class CallableObject:
    def __call__(self, *args, **kwargs):
        return ("called", args, tuple(sorted(kwargs)))


class NotCallable:
    pass


def _echo(*args, **kwargs):
    return args, kwargs


def _generator(*args):
    yield from args


CALLABLES = [
    len, sum, repr, str, int, float, abs, sorted, list, tuple, bool, hash,
    type, divmod, pow, max, min, operator.add, operator.getitem,
    operator.truediv, math.sqrt, str.upper, bytes.fromhex, _echo,
    CallableObject(), functools.partial(_echo, "p"), dict, Exception,
    NotCallable, "".join, [1, 2, 3].index, _generator,
]
NON_CALLABLES = [None, 0, 1.5, "fn", b"x", [len], (len,), NotCallable(),
                 object()]


def normalized(out):
    """Generators and new instances (Exception(), NotCallable()) differ
    by identity: compare what they yield, or their type and args."""
    if out[0] == "ok" and hasattr(out[1], "__next__"):
        return ("ok", ("generator", list(out[1])))
    if (out[0] == "ok" and type(out[1]).__eq__ is object.__eq__
            and not isinstance(out[1], type)):
        return ("ok", ("instance", type(out[1]),
                       getattr(out[1], "args", None)))
    return out


@FUZZ
@given(fn=st.sampled_from(CALLABLES),
       args=st.lists(values, max_size=3),
       kwargs=st.dictionaries(st.sampled_from(["fn", "key", "x", "base",
                                               "start", ""]),
                              values, max_size=2))
def test_run_with_any_callable_and_arguments_matches_a_direct_call(
        ev, fn, args, kwargs):
    direct = normalized(outcome(lambda: fn(*args, **kwargs)))
    blocking = normalized(outcome(
        lambda: offloop.blocking.run(fn, *args, **kwargs)))
    awaited = normalized(outcome(
        lambda: call_on(ev, offloop.run, fn, *args, **kwargs)))
    assert same_outcome(blocking, direct), (blocking, direct)
    assert same_outcome(awaited, direct), (awaited, direct)


@FUZZ
@given(fn=st.sampled_from(NON_CALLABLES) | values,
       args=st.lists(values, max_size=2))
def test_run_of_anything_not_callable_raises_type_error_at_the_call(
        ev, fn, args):
    assume(not callable(fn))
    before = offloop.stats()["submitted"]
    with pytest.raises(TypeError, match="fn"):
        offloop.blocking.run(fn, *args)
    with pytest.raises(TypeError, match="fn"):
        call_on(ev, offloop.run, fn, *args)
    assert offloop.stats()["submitted"] == before


# ---- configure ---------------------------------------------------------

counts = (st.none() | st.booleans() | st.floats(allow_nan=True)
          | st.text(max_size=4) | st.integers(-10, 5000)
          | st.integers(-2 ** 80, 2 ** 80)
          | st.sampled_from([2 ** 32, 2 ** 42, 2 ** 63, 2 ** 64, -2 ** 63]))


@FUZZ
@given(threads=counts, max_queue=counts,
       how=st.sampled_from(["kw", "pos", "threads_only", "queue_only"]))
def test_configure_accepts_valid_counts_and_rejects_the_rest(
        threads, max_queue, how):
    default = offloop.stats()["threads"]
    call = {
        "kw": lambda: offloop.configure(threads=threads,
                                        max_queue=max_queue),
        "pos": lambda: offloop.configure(threads, max_queue),
        "threads_only": lambda: offloop.configure(threads=threads),
        "queue_only": lambda: offloop.configure(max_queue=max_queue),
    }[how]
    used_threads = how != "queue_only"
    used_queue = how != "threads_only"
    try:
        before = offloop.stats()
        out = outcome(call)
        after = offloop.stats()
        if out[0] == "exc":
            assert_documented_error(out[1])
            assert (after["threads"], after["max_queue"]) == (
                before["threads"], before["max_queue"]), "changed on error"
            return
        assert out[1] is None
        if used_threads and threads is not None:
            assert after["threads"] == threads
        if used_queue and max_queue is not None:
            assert after["max_queue"] == max_queue
        if after["threads"] <= 8 and (after["max_queue"] in (0, None)
                                      or after["max_queue"] >= 4):
            # The pool still works with what was accepted.
            assert _testing.blocking.spin(100) == _testing.spin_reference(100)
    finally:
        offloop.configure()
    s = offloop.stats()
    assert (s["threads"], s["max_queue"]) == (default, 0)


def test_configure_rejects_non_int_types_and_unknown_keywords():
    try:
        for bad in ({"threads": 2.0}, {"threads": "2"}, {"threads": True},
                    {"max_queue": [1]}, {"max_queue": 1.0}):
            with pytest.raises(TypeError):
                offloop.configure(**bad)
        with pytest.raises(TypeError):
            offloop.configure(workers=2)
        with pytest.raises(TypeError):
            offloop.configure(1, 2, 3)
    finally:
        offloop.configure()


# ---- the _testing jobs -------------------------------------------------

anything = values | st.sampled_from([object(), NotCallable(), len,
                                     float("nan"), float("inf"),
                                     -float("inf"), 2 ** 64 - 1, 2 ** 64,
                                     -1, 2 ** 200, -2 ** 200])

BIG_SPIN = 1_000_000  # more steps than a test wants to wait for


def _spin_expected(n):
    return _testing.spin_reference(n)


@FUZZ
@given(arg=anything | st.integers(0, 5000)
       | st.integers(0, 2 ** 64 - 1))
def test_spin_with_any_argument(ev, arg):
    if type(arg) is int and 0 <= arg < 2 ** 64:
        if arg <= 5000:
            ref = _spin_expected(arg)
            assert _testing.blocking.spin(arg) == ref
            assert call_on(ev, _testing.spin, arg) == ref
        else:  # valid but long: cancelled at once, never a hang
            async def cancel_it():
                fut = _testing.spin(arg)
                fut.cancel()
                async with asyncio.timeout(CALL_DEADLINE):
                    with pytest.raises(asyncio.CancelledError):
                        await fut
            ev.run_until_complete(cancel_it())
        return
    before = offloop.stats()["submitted"]
    for call in (lambda: _testing.blocking.spin(arg),
                 lambda: call_on(ev, _testing.spin, arg)):
        out = outcome(call)
        assert out[0] == "exc", out
        assert_documented_error(out[1])
        assert "iterations" in str(out[1])
    assert offloop.stats()["submitted"] == before


@FUZZ
@given(arg=anything | st.floats(0, 0.002) | st.floats(0, 1e6)
       | st.integers(0, 10 ** 6))
def test_sleep_with_any_argument(ev, arg):
    valid = (type(arg) in (int, float) and not isinstance(arg, bool)
             and 0 <= arg <= 86400)
    if valid:
        if arg <= 0.002:
            assert _testing.blocking.sleep(arg) is None
            assert call_on(ev, _testing.sleep, arg) is None
        else:  # a long sleep, cancelled: ends at its next 1 ms check
            async def cancel_it():
                fut = _testing.sleep(arg)
                await asyncio.sleep(0)
                fut.cancel()
                async with asyncio.timeout(CALL_DEADLINE):
                    with pytest.raises(asyncio.CancelledError):
                        await fut
            ev.run_until_complete(cancel_it())
        return
    for call in (lambda: _testing.blocking.sleep(arg),
                 lambda: call_on(ev, _testing.sleep, arg)):
        out = outcome(call)
        assert out[0] == "exc", out
        assert_documented_error(out[1])
        assert "seconds" in str(out[1])


@FUZZ
@given(arg=anything | st.text())
def test_fail_with_any_argument(ev, arg):
    for call in (lambda: _testing.blocking.fail(arg),
                 lambda: call_on(ev, _testing.fail, arg)):
        out = outcome(call)
        assert out[0] == "exc", out
        if isinstance(arg, str):
            assert type(out[1]) is RuntimeError, out
            assert str(out[1]) == arg
        else:
            assert_documented_error(out[1])
            assert "message" in str(out[1])


@FUZZ
@given(args=st.lists(anything, min_size=1, max_size=3))
def test_noop_and_the_jobs_reject_extra_arguments(ev, args):
    for fn in (_testing.noop, _testing.blocking.noop):
        with pytest.raises(TypeError):
            fn(*args)
    for fn in (_testing.spin, _testing.sleep, _testing.fail):
        with pytest.raises(TypeError):
            fn(*args, *args)
        with pytest.raises(TypeError):
            fn()
    assert _testing.blocking.noop() is None
    assert call_on(ev, _testing.noop) is None


# ---- the vector kernels ------------------------------------------------

if KERNELS:
    F32 = numpy.float32
    DTYPES = [numpy.float32, numpy.float64, numpy.float16, numpy.int32,
              numpy.int64, numpy.uint8, numpy.bool_, numpy.complex64]
    # Finite values whose float32 squares neither overflow nor underflow
    # (elements below about 1e-19 square to zero in float32: such a row
    # counts as a zero row, a float32 limit, not a bug).  Every float32,
    # nan and inf included, is fuzzed for crashes in the junk test.
    finite = (st.just(0.0) | st.floats(2 ** -10, 100, width=32)
              | st.floats(-100, -2 ** -10, width=32))
    any_f32 = st.floats(width=32)

    def float_arrays(shape, dtype=F32):
        return hnp.arrays(dtype, shape, elements=finite)

    @st.composite
    def matrices(draw, rows=(1, 40), dims=(1, 40)):
        return draw(float_arrays((draw(st.integers(*rows)),
                                  draw(st.integers(*dims)))))

    @st.composite
    def odd_layout(draw, arr):
        """The same values in another layout or container, or as is."""
        how = draw(st.sampled_from(
            ["as is", "fortran", "strided", "reversed", "memoryview",
             "array", "list", "float64", "readonly", "dtype"]))
        if how == "fortran" and arr.ndim == 2:
            return how, numpy.asfortranarray(arr)
        if how == "strided":
            big = numpy.repeat(arr, 2, axis=-1)
            return how, big[..., ::2]
        if how == "reversed":
            return how, arr[::-1]
        if how == "memoryview":
            return how, memoryview(arr)
        if how == "array" and arr.ndim == 1:
            return how, array.array("f", arr.tolist())
        if how == "list":
            return how, arr.tolist()
        if how == "float64":
            return how, arr.astype(numpy.float64)
        if how == "readonly":
            ro = arr.copy()
            ro.flags.writeable = False
            return how, ro
        if how == "dtype":
            dtype = draw(st.sampled_from(DTYPES))
            return how, arr.astype(dtype)
        return "as is", arr

    def ref_cos(q, m):
        q = numpy.atleast_2d(numpy.asarray(q, numpy.float64))
        m = numpy.asarray(m, numpy.float64)
        nq = numpy.linalg.norm(q, axis=1)[:, None]
        nm = numpy.linalg.norm(m, axis=1)[None, :]
        with numpy.errstate(divide="ignore", invalid="ignore"):
            s = (q @ m.T) / (nq * nm)
        return numpy.where((nq * nm) == 0, 0.0, s)

    def close(got, want):
        return numpy.allclose(numpy.asarray(got, numpy.float64), want,
                              rtol=1e-3, atol=1e-3)

    junk = st.sampled_from([None, 3, 1.5, "abc", b"\x00" * 16, object(),
                            [[1.0, 2.0], [3.0]], [], [[]], [1, "x"],
                            {"a": 1}, bytearray(8), [True, False],
                            numpy.array(3.0, F32),
                            numpy.zeros((2, 2, 2), F32),
                            numpy.zeros((0, 4), F32),
                            numpy.zeros((4, 0), F32),
                            numpy.zeros(0, F32),
                            numpy.lib.stride_tricks.as_strided(
                                numpy.zeros(1, F32), (2 ** 40, 2 ** 20),
                                (0, 0)),
                            numpy.broadcast_to(numpy.ones(4, F32),
                                               (2 ** 30, 4))])

    def both(ev, name, /, *args, **kwargs):
        """The blocking twin's and the awaitable's outcomes."""
        blocking = getattr(offloop.blocking, name)
        awaitable = getattr(offloop, name)
        return (outcome(lambda: blocking(*args, **kwargs)),
                outcome(lambda: call_on(ev, awaitable, *args, **kwargs)))

    def expect(outs, layout, check, may_refuse=()):
        """A layout numpy float32 C-contiguous must succeed and `check`;
        any other may also raise TypeError/ValueError."""
        for out in outs:
            if out[0] == "exc":
                assert_documented_error(out[1])
                assert layout not in ("as is", "float64", "list",
                                      "memoryview", "array", "readonly")
                assert layout in may_refuse or layout in (
                    "fortran", "strided", "reversed", "dtype"), (
                    layout, out)
            else:
                assert check(out[1]), (layout, out[1])


@needs_kernels
@FUZZ
@given(data=st.data(), d=st.integers(1, 300))
def test_cosine_similarity_fuzz(ev, data, d):
    a = data.draw(float_arrays(d))
    b = data.draw(float_arrays(d))
    layout, a2 = data.draw(odd_layout(a))
    want = ref_cos(a, b[None, :])[0, 0]
    outs = both(ev, "cosine_similarity", a2, b)
    expect(outs, layout,
           lambda r: type(r) is float and math.isclose(
               r, want, rel_tol=1e-3, abs_tol=1e-3))


@needs_kernels
@FUZZ
@given(data=st.data())
def test_kernels_with_junk_and_mismatched_arguments_raise_clearly(
        ev, data):
    def arg():
        n, d = data.draw(st.integers(1, 50)), data.draw(st.integers(1, 50))
        return data.draw(junk | matrices() | float_arrays(n)
                         | hnp.arrays(F32, (n, d), elements=any_f32)
                         | hnp.arrays(F32, n, elements=any_f32))

    x, y = arg(), arg()
    k = data.draw(st.integers(-3, 60) | st.sampled_from(
        [2 ** 63, -2 ** 63, 2 ** 64, 2 ** 100, True, 1.0, None, "3"]))
    name, args, kwargs = data.draw(st.sampled_from([
        ("cosine_similarity", (x, y), {}),
        ("batch_normalize", (x,), {}),
        ("batch_normalize", (x,), {"out": y}),
        ("cosine_similarities", (x, y), {}),
        ("top_k", (x, y), {"k": k}),
        ("top_k", (x, y), {"k": k, "normalized": True}),
    ]))
    for out in both(ev, name, *args, **kwargs):
        if out[0] == "exc":
            assert_documented_error(out[1])


@needs_kernels
@FUZZ
@given(data=st.data())
def test_batch_normalize_fuzz(ev, data):
    x = data.draw(matrices(rows=(1, 300), dims=(1, 64)))
    if data.draw(st.booleans()):
        x[data.draw(st.integers(0, len(x) - 1))] = 0  # a zero row
    layout, x2 = data.draw(odd_layout(x))
    norms = numpy.linalg.norm(x.astype(numpy.float64), axis=1,
                              keepdims=True)
    want = numpy.where(norms == 0, 0.0,
                       x / numpy.where(norms == 0, 1, norms))
    outs = both(ev, "batch_normalize", x2)
    expect(outs, layout,
           lambda r: r.shape == x.shape and r.dtype == F32
           and close(r, want))
    out_kind = data.draw(st.sampled_from(
        ["good", "same", "wrong shape", "wrong dtype", "strided",
         "readonly", "list"]))
    out = {"good": lambda: numpy.empty_like(x),
           "same": lambda: x.copy(),
           "wrong shape": lambda: numpy.empty((len(x) + 1, x.shape[1]), F32),
           "wrong dtype": lambda: numpy.empty(x.shape, numpy.float64),
           "strided": lambda: numpy.empty((len(x), 2 * x.shape[1]),
                                          F32)[:, ::2],
           "readonly": lambda: numpy.frombuffer(
               bytes(x.nbytes), F32).reshape(x.shape),
           "list": lambda: [[0.0] * x.shape[1]] * len(x)}[out_kind]
    for blocking in (True, False):
        o = out()
        # The "strided" slice of a one-row matrix is still C-contiguous
        # to numpy, and a fine `out`.
        fits = out_kind in ("good", "same") or (
            out_kind == "strided" and o.flags.c_contiguous)
        src = o if out_kind == "same" else x
        if out_kind == "same":
            o[:] = x
        if blocking:
            res = outcome(functools.partial(offloop.blocking.batch_normalize,
                                            src, out=o))
        else:
            res = outcome(functools.partial(call_on, ev,
                                            offloop.batch_normalize, src,
                                            out=o))
        if fits:
            assert res[0] == "ok", res
            assert close(o, want)
            assert res[1] is o or numpy.shares_memory(res[1], o)
        else:
            assert res[0] == "exc", (out_kind, res)
            assert_documented_error(res[1])


@needs_kernels
@FUZZ
@given(data=st.data())
def test_cosine_similarities_and_top_k_fuzz(ev, data):
    m = data.draw(matrices(rows=(1, 400), dims=(1, 48)))
    d = m.shape[1]
    if data.draw(st.booleans()):
        q = data.draw(float_arrays(d))
    else:
        q = data.draw(float_arrays((data.draw(st.integers(1, 5)), d)))
    layout, m2 = data.draw(odd_layout(m))
    want = ref_cos(q, m)
    shape = want.shape if q.ndim == 2 else want.shape[1:]
    outs = both(ev, "cosine_similarities", q, m2)
    expect(outs, layout,
           lambda r: r.shape == shape and close(r, want.reshape(shape)))

    k = data.draw(st.integers(1, len(m)))
    normalized = data.draw(st.booleans())
    if normalized:
        want = (numpy.atleast_2d(q).astype(numpy.float64)
                @ m.astype(numpy.float64).T)
        # m's rows are trusted to be unit length: q alone is normalized.
        qn = numpy.linalg.norm(numpy.atleast_2d(q).astype(numpy.float64),
                               axis=1)[:, None]
        want = numpy.where(qn == 0, 0.0, want / numpy.where(qn == 0, 1, qn))
    kshape = (len(want), k) if q.ndim == 2 else (k,)

    def check(r):
        scores, idx = r
        if scores.shape != kshape or idx.shape != kshape:
            return False
        s2, i2 = numpy.atleast_2d(scores), numpy.atleast_2d(idx)
        for row, (s, i) in enumerate(zip(s2, i2)):
            if len(set(i.tolist())) != k or not ((0 <= i) & (i < len(m))).all():
                return False
            if not close(s, want[row, i]):  # the scores of those rows
                return False
            if (numpy.diff(s.astype(numpy.float64)) > 1e-4).any():
                return False  # best first
            kth = numpy.sort(want[row])[::-1][k - 1]
            if not math.isclose(float(s[-1]), kth, rel_tol=1e-3,
                                abs_tol=1e-3):
                return False  # the k best, ties aside
        return True

    kwargs = {"k": k, "normalized": True} if normalized else {"k": k}
    outs = both(ev, "top_k", q, m2, **kwargs)
    expect(outs, layout, check)
    for bad_k in (0, -1, len(m) + 1, 2 ** 64):
        for out in both(ev, "top_k", q, m, k=bad_k):
            assert out[0] == "exc" and type(out[1]) is ValueError, out
