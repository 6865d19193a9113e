"""Coalescing: concurrent calls that may share a run share one, with no
added wait (DESIGN, "Coalescing").  Each test holds every worker with a
callable that waits on an event, queues its calls behind them, then lets
the workers go: the first worker to come back takes every queued call
with the same key as one batch.  stats() proves what ran together."""

import asyncio
import contextlib
import sys
import threading
import time

import numpy as np
import pytest

import offloop
from offloop import _core, _testing

from workers import held_workers

uvloop = pytest.importorskip("uvloop")

N, D = 4_000, 96  # big enough to go to the pool, small to stay quick


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(13)
    m = rng.standard_normal((N, D), dtype=np.float32)
    m2 = rng.standard_normal((N, D), dtype=np.float32)
    q = rng.standard_normal((24, D), dtype=np.float32)
    return m, m2, q


def wait_queued(n, timeout=10.0):
    """Bounded wait until n jobs wait in the queue (filled by threads
    this test cannot await)."""
    deadline = time.monotonic() + timeout
    while offloop.stats()["queued"] < n:
        assert time.monotonic() < deadline, offloop.stats()
        time.sleep(0.001)


def delta(before, *keys):
    after = offloop.stats()
    return tuple(after[k] - before[k] for k in keys)


@contextlib.contextmanager
def configured(**kwargs):
    offloop.configure(**kwargs)
    try:
        yield
    finally:
        offloop.configure()


# ---- top_k and cosine_similarities --------------------------------------

async def test_twenty_one_query_top_k_calls_run_as_one_batch(loop, data):
    m, _, q = data
    before = offloop.stats()
    with held_workers():
        futs = [offloop.top_k(q[i], m, k=10) for i in range(20)]
    results = await asyncio.gather(*futs)
    assert delta(before, "batches", "batched") == (1, 20)
    # Exactly one multi-query call over the stacked queries ...
    ref_scores, ref_indices = offloop.blocking.top_k(q[:20], m, k=10)
    for i, (scores, indices) in enumerate(results):
        assert scores.shape == (10,) and indices.dtype == np.int64
        np.testing.assert_array_equal(indices, ref_indices[i])
        np.testing.assert_array_equal(scores, ref_scores[i])
        # ... and the call made alone, to float32 rounding.
        alone_scores, alone_indices = offloop.blocking.top_k(q[i], m, k=10)
        np.testing.assert_array_equal(indices, alone_indices)
        np.testing.assert_allclose(scores, alone_scores, rtol=1e-5,
                                   atol=1e-6)


async def test_a_batch_replanned_to_coarser_row_blocks_is_exact(loop):
    """A big k makes the shared run's row blocks coarser than each call's
    own (its partial lists stay within budget): results are still those
    of the stacked call."""
    rng = np.random.default_rng(5)
    m = rng.standard_normal((20_000, 96), dtype=np.float32)
    q = rng.standard_normal((20, 96), dtype=np.float32)
    before = offloop.stats()
    with held_workers():
        futs = [offloop.top_k(q[i], m, k=1000) for i in range(20)]
    results = await asyncio.gather(*futs)
    assert delta(before, "batches", "batched") == (1, 20)
    ref_scores, ref_indices = offloop.blocking.top_k(q, m, k=1000)
    for i, (scores, indices) in enumerate(results):
        np.testing.assert_array_equal(indices, ref_indices[i])
        np.testing.assert_array_equal(scores, ref_scores[i])


async def test_one_query_cosine_similarities_coalesce(loop, data):
    m, _, q = data
    before = offloop.stats()
    with held_workers():
        futs = [offloop.cosine_similarities(q[i], m) for i in range(8)]
    results = await asyncio.gather(*futs)
    assert delta(before, "batches", "batched") == (1, 8)
    ref = offloop.blocking.cosine_similarities(q[:8], m)
    for i, scores in enumerate(results):
        np.testing.assert_array_equal(scores, ref[i])
        np.testing.assert_allclose(
            scores, offloop.blocking.cosine_similarities(q[i], m),
            rtol=1e-5, atol=1e-6)


async def test_different_matrices_k_and_normalized_never_mix(loop, data):
    m, m2, q = data
    calls = [(m, 10, False), (m, 5, False), (m2, 10, False), (m, 10, True)]
    before = offloop.stats()
    with held_workers():
        futs = [(args, i, offloop.top_k(q[i], args[0], k=args[1],
                                        normalized=args[2]))
                for i in range(12) for args in calls]
    for args, i, fut in futs:
        scores, indices = await fut
        # The batch of this key: the twelve queries stacked.
        ref_s, ref_i = offloop.blocking.top_k(q[:12], args[0], k=args[1],
                                              normalized=args[2])
        np.testing.assert_array_equal(indices, ref_i[i])
        np.testing.assert_array_equal(scores, ref_s[i])
    assert delta(before, "batches", "batched") == (4, 48)


async def test_top_k_and_cosine_similarities_never_mix(loop, data):
    m, _, q = data
    before = offloop.stats()
    with held_workers():
        tops = [offloop.top_k(q[i], m, k=3) for i in range(4)]
        sims = [offloop.cosine_similarities(q[i], m) for i in range(4)]
    for i in range(4):
        scores, indices = await tops[i]
        full = await sims[i]
        np.testing.assert_array_equal(np.argsort(-full, kind="stable")[:3],
                                      indices)
    assert delta(before, "batches", "batched") == (2, 8)


async def test_max_batch_is_honoured_and_one_turns_coalescing_off(loop,
                                                                   data):
    m, _, q = data
    with configured(max_batch=8):
        assert offloop.stats()["max_batch"] == 8
        before = offloop.stats()
        with held_workers():
            futs = [offloop.top_k(q[i], m, k=4) for i in range(20)]
        await asyncio.gather(*futs)
        assert delta(before, "batches", "batched") == (3, 20)  # 8, 8, 4
    with configured(max_batch=1):
        before = offloop.stats()
        with held_workers():
            futs = [offloop.top_k(q[i], m, k=4) for i in range(6)]
        results = await asyncio.gather(*futs)
        assert delta(before, "batches", "batched") == (0, 0)
    ref_s, ref_i = offloop.blocking.top_k(q[:6], m, k=4)
    for i, (scores, indices) in enumerate(results):
        np.testing.assert_array_equal(indices, ref_i[i])


@pytest.mark.parametrize("bad, error", [
    (0, ValueError), (4097, ValueError), (-1, ValueError),
    (2.0, TypeError), ("8", TypeError), (True, TypeError)])
def test_configure_max_batch_rejects_bad_values(bad, error):
    with pytest.raises(error, match="max_batch"):
        offloop.configure(max_batch=bad)
    assert offloop.stats()["max_batch"] == 64


def test_configure_max_batch_is_keyword_only():
    with pytest.raises(TypeError):
        offloop.configure(None, None, 8)


async def test_member_cancelled_while_queued_never_runs(loop, data):
    m, _, q = data
    before = offloop.stats()
    with held_workers():
        futs = [offloop.top_k(q[i], m, k=5) for i in range(10)]
        futs[3].cancel()
        futs[0].cancel()  # the would-be leader too
    ref_i = offloop.blocking.top_k(q[:10], m, k=5)[1]
    for i, fut in enumerate(futs):
        if i in (0, 3):
            with pytest.raises(asyncio.CancelledError):
                await fut
        else:
            np.testing.assert_array_equal((await fut)[1], ref_i[i])
    assert delta(before, "batches", "batched", "cancelled") == (1, 8, 2)


async def test_member_cancelled_after_its_batch_started_is_discarded(loop,
                                                                      data):
    m, _, q = data
    before = offloop.stats()
    _core._hold_batch_chunks(0)  # the batch waits at its first chunk
    try:
        with held_workers():
            futs = [offloop.top_k(q[i], m, k=5) for i in range(6)]
        async with asyncio.timeout(10):
            while offloop.stats()["batches"] == before["batches"]:
                await asyncio.sleep(0)
        futs[0].cancel()  # the leader
        futs[4].cancel()
    finally:
        _core._hold_batch_chunks(None)
    ref_i = offloop.blocking.top_k(q[:6], m, k=5)[1]
    for i, fut in enumerate(futs):
        if i in (0, 4):
            with pytest.raises(asyncio.CancelledError):
                await fut
        else:
            np.testing.assert_array_equal((await fut)[1], ref_i[i])
    assert _testing.wait_idle(10)
    async with asyncio.timeout(10):  # the discarded results reach the loop
        while delta(before, "cancelled") != (2,):
            await asyncio.sleep(0)
    assert delta(before, "batches", "batched") == (1, 6)


def test_members_from_four_loops_and_two_blocking_callers_share_a_batch(
        data):
    m, _, q = data
    results, errors = {}, []

    def in_loop(i, factory):
        async def one():
            return await offloop.top_k(q[i], m, k=7)
        try:
            loop = factory()
            try:
                results[i] = (loop.run_until_complete(one()),
                              threading.get_ident())
            finally:
                loop.close()
        except BaseException as exc:  # brought back to the main thread
            errors.append(exc)

    def blocking(i):
        try:
            results[i] = (offloop.blocking.top_k(q[i], m, k=7),
                          threading.get_ident())
        except BaseException as exc:
            errors.append(exc)

    before = offloop.stats()
    threads = [threading.Thread(target=in_loop, args=(i, f)) for i, f in
               enumerate([asyncio.new_event_loop, uvloop.new_event_loop] * 2)]
    threads += [threading.Thread(target=blocking, args=(i,))
                for i in (4, 5)]
    with held_workers():
        for t in threads:
            t.start()
        wait_queued(6)
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert delta(before, "batches", "batched") == (1, 6)
    ref_s, ref_i = offloop.blocking.top_k(q[:6], m, k=7)
    for i in range(6):
        (scores, indices), ident = results[i]
        np.testing.assert_array_equal(indices, ref_i[i])
        np.testing.assert_array_equal(scores, ref_s[i])
    # Each resolved on its own thread.
    assert len({ident for _, ident in results.values()}) == 6


async def test_a_lone_call_runs_at_once_alone(loop, data):
    """No timer: with the pool idle a call never waits for companions."""
    m, _, q = data
    before = offloop.stats()
    for i in range(5):
        await offloop.top_k(q[i], m, k=3)
    assert delta(before, "batches", "batched") == (0, 0)


async def test_stats_balance_after_coalesced_runs(loop, data):
    m, _, q = data
    assert _testing.wait_idle(10)
    s = offloop.stats()
    with held_workers():
        futs = [offloop.top_k(q[i], m, k=2) for i in range(16)]
        futs[5].cancel()
    await asyncio.gather(*futs, return_exceptions=True)
    assert _testing.wait_idle(10)
    t = offloop.stats()
    ended = sum(t[k] - s[k] for k in ("completed", "failed", "cancelled",
                                      "dropped"))
    # The holders (blocking.run) are jobs too.
    assert ended == (t["submitted"] - s["submitted"]) + (
        t["inline"] - s["inline"])
    assert _testing.live_jobs() == 0


# ---- offloop.batched ------------------------------------------------------

def _recording(fn=None):
    calls = []

    def batch_fn(items):
        calls.append(list(items))
        return [x * 2 for x in items] if fn is None else fn(items)
    return batch_fn, calls


async def test_batched_coalesces_concurrent_calls_into_one(loop):
    fn, calls = _recording()
    f = offloop.batched(fn)
    with held_workers():
        futs = [f(i) for i in range(20)]
    assert await asyncio.gather(*futs) == [i * 2 for i in range(20)]
    assert calls == [list(range(20))]


async def test_batched_alone_runs_at_once_with_one_item(loop):
    fn, calls = _recording()
    f = offloop.batched(fn)
    assert await f(4) == 8
    assert calls == [[4]]


async def test_batched_exception_fails_the_batch_and_the_next_runs(loop):
    def boom(items):
        if 13 in items:
            raise KeyError("thirteen")
        return [x + 1 for x in items]

    f = offloop.batched(boom)
    with held_workers():
        futs = [f(i) for i in range(10, 16)]
    outcomes = await asyncio.gather(*futs, return_exceptions=True)
    assert all(isinstance(o, KeyError) for o in outcomes), outcomes
    with held_workers():
        futs = [f(i) for i in range(3)]
    assert await asyncio.gather(*futs) == [1, 2, 3]


@pytest.mark.parametrize("returned", [lambda xs: xs[:-1], lambda xs: 5,
                                      lambda xs: None])
async def test_batched_wrong_result_shape_fails_every_member(loop, returned):
    f = offloop.batched(returned)
    with held_workers():
        futs = [f(i) for i in range(4)]
    outcomes = await asyncio.gather(*futs, return_exceptions=True)
    assert all(isinstance(o, (ValueError, TypeError)) for o in outcomes)
    assert len({type(o) for o in outcomes}) == 1


async def test_batched_cancelled_while_queued_is_never_passed(loop):
    fn, calls = _recording()
    f = offloop.batched(fn)
    with held_workers():
        futs = [f(i) for i in range(6)]
        futs[2].cancel()
    outcomes = await asyncio.gather(*futs, return_exceptions=True)
    assert isinstance(outcomes[2], asyncio.CancelledError)
    assert calls == [[0, 1, 3, 4, 5]]


async def test_batched_max_batch_and_blocking_twin_coalesce(loop):
    fn, calls = _recording()
    f = offloop.batched(fn, max_batch=4)
    box = []
    with held_workers():
        futs = [f(i) for i in range(6)]
        t = threading.Thread(target=lambda: box.append(f.blocking(100)))
        t.start()
        await asyncio.to_thread(wait_queued, 7)
    assert await asyncio.gather(*futs) == [i * 2 for i in range(6)]
    t.join(10)
    assert box == [200]
    assert sorted(len(c) for c in calls) == [3, 4]
    assert sorted(x for c in calls for x in c) == [0, 1, 2, 3, 4, 5, 100]


async def test_batched_wrappers_never_mix(loop):
    f1, calls1 = _recording()
    f2, calls2 = _recording(lambda xs: [-x for x in xs])
    a, b = offloop.batched(f1), offloop.batched(f2)
    with held_workers():
        futs = [a(1), b(1), a(2), b(2)]
    assert await asyncio.gather(*futs) == [2, -1, 4, -2]
    assert calls1 == [[1, 2]] and calls2 == [[1, 2]]


def test_batched_rejects_bad_arguments_at_the_call():
    with pytest.raises(TypeError, match="fn must be callable"):
        offloop.batched(42)
    for bad in (0, 4097, -3):
        with pytest.raises(ValueError, match="max_batch"):
            offloop.batched(len, max_batch=bad)
    for bad in (2.0, "4", True, None):
        with pytest.raises(TypeError, match="max_batch"):
            offloop.batched(len, max_batch=bad)
    assert offloop.batched(len, max_batch=np.int64(3)).max_batch == 3


def test_batched_decorator_forms_and_references():
    @offloop.batched
    def double(items):
        return [x * 2 for x in items]

    @offloop.batched(max_batch=2)
    def triple(items):
        return [x * 3 for x in items]

    item = object()
    before = sys.getrefcount(item), sys.getrefcount(double.fn)
    assert double.blocking(4) == 8 and triple.blocking(4) == 12
    for _ in range(50):
        assert offloop.batched(lambda xs: xs).blocking(item) is item
    assert _testing.wait_idle(10)
    assert (sys.getrefcount(item), sys.getrefcount(double.fn)) == before
    assert triple.max_batch == 2 and "max_batch=2" in repr(triple)


def test_the_batched_encoder_example_runs_and_coalesces():
    import pathlib
    import subprocess

    script = pathlib.Path(__file__).parent.parent / "examples" / (
        "batched_encoder.py")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("100 requests answered")
    sizes = [int(x) for x in first.split("[")[1].rstrip(")]").split(",")]
    assert sum(sizes) == 100 and max(sizes) <= 64
    assert len(sizes) < 100  # concurrent calls shared encoder calls
