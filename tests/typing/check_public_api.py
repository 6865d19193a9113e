"""Every public call of offloop, with the types users pass, for
``mypy --strict`` (tests/test_sourcecode.py and .ci/run's typing stage).

Each result is pinned with ``assert_type``: a stub that widens a result
to Any, or narrows an argument so that a numpy array no longer fits,
fails the check.  The calls are also run (``python
tests/typing/check_public_api.py``), so that what mypy accepts here is
what the functions accept.  ``_rejected`` is type-checked only: each of
its lines must be an error (``--strict`` reports an unused ignore).
"""

import array
import asyncio
import hashlib
import sys
from collections.abc import Callable
from typing import Any, Literal, assert_type

import numpy as np
import numpy.typing as npt

import offloop
import offloop.blocking

F32 = npt.NDArray[np.float32]
TopK = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]

rng = np.random.default_rng(0)
q: F32 = rng.random(16, dtype=np.float32)
qs: F32 = rng.random((3, 16), dtype=np.float32)
m: F32 = rng.random((1000, 16), dtype=np.float32)
m64: npt.NDArray[np.float64] = rng.random((1000, 16))
unit = m / np.linalg.norm(m, axis=1, keepdims=True)  # NDArray[floating]
q_list = [1.0, 2.0] * 8
m_list = [[float(i)] * 16 for i in range(10)]
q_array = array.array("f", q.tolist())
m_view = m.data  # a memoryview (memoryview(ndarray) needs 3.12's stubs)


def scale(x: F32, by: float) -> F32:
    return x * np.float32(by)


def double_all(xs: list[float]) -> list[float]:
    return [2 * x for x in xs]


doubled = offloop.batched(double_all)


@offloop.batched(max_batch=16)
def lengths(texts: list[str]) -> list[int]:
    return [len(t) for t in texts]


@offloop.batched
def norms(rows: list[F32]) -> F32:  # an array: its items are Any
    out: F32 = np.linalg.norm(np.stack(rows), axis=1).astype(np.float32)
    return out


async def awaitables() -> None:
    assert_type(await offloop.cosine_similarity(q, m[0]), float)
    assert_type(await offloop.cosine_similarity(q_list, q_array), float)
    assert_type(await offloop.cosine_similarity(q.data, q), float)

    assert_type(await offloop.batch_normalize(m), F32)
    assert_type(await offloop.batch_normalize(m64), F32)
    assert_type(await offloop.batch_normalize(m_list), F32)
    out = np.empty_like(m)
    assert_type(await offloop.batch_normalize(m, out=out), F32)
    view = np.empty_like(m).data
    assert_type(await offloop.batch_normalize(m, out=view), memoryview)

    assert_type(await offloop.cosine_similarities(q, m), F32)
    assert_type(await offloop.cosine_similarities(qs, m_view), F32)
    assert_type(await offloop.cosine_similarities(q_list, m_list), F32)

    assert_type(await offloop.top_k(q, m), TopK)
    assert_type(await offloop.top_k(qs, unit, 5, normalized=True), TopK)
    assert_type(await offloop.top_k(q_array, m_view, k=3), TopK)
    scores, indices = await offloop.top_k(q, m64, k=10)
    assert_type(scores, npt.NDArray[np.float32])
    assert_type(indices, npt.NDArray[np.int64])

    qm = await offloop.quantize(m, "int8")
    assert_type(qm, offloop.QuantizedMatrix)
    assert_type(qm.shape, tuple[int, int])
    assert_type(qm.nbytes, int)
    assert_type(qm.dtype, Literal["bfloat16", "int8"])
    assert_type(await offloop.top_k(q, qm, 3), TopK)
    assert_type(await offloop.top_k(qs, qm, 3, rerank=m), TopK)
    assert_type(await offloop.cosine_similarities(q, qm), F32)
    saved = offloop.QuantizedMatrix(**qm.arrays())
    assert_type(saved, offloop.QuantizedMatrix)

    fut = offloop.top_k(q, m)
    assert_type(fut, offloop.Future[TopK])
    assert isinstance(fut, asyncio.Future)
    await fut

    assert_type(await offloop.run(hashlib.sha256, b"x"), "hashlib._Hash")
    assert_type(await offloop.run(scale, m, 2.0), F32)
    assert_type(await offloop.run(scale, m, by=2.0), F32)
    assert_type(await offloop.run(sum, [1, 2]), int)
    assert_type(await offloop.run(len, "abc"), int)

    assert_type(doubled, "offloop.Batched[float, float]")
    assert_type(await doubled(2.0), float)
    assert_type(lengths, "offloop.Batched[str, int]")
    assert_type(await lengths("abc"), int)
    assert_type(doubled(1.0), offloop.Future[float])
    assert_type(await norms(q), Any)


def blocking() -> None:
    assert_type(offloop.blocking.cosine_similarity(q, m[0]), float)
    assert_type(offloop.blocking.batch_normalize(m), F32)
    out = np.empty_like(m)
    assert_type(offloop.blocking.batch_normalize(m, out=out), F32)
    assert_type(offloop.blocking.cosine_similarities(q, m), F32)
    assert_type(offloop.blocking.top_k(q, m, k=3), TopK)
    assert_type(offloop.blocking.top_k(qs, unit, normalized=True), TopK)
    qm = offloop.blocking.quantize(m, "bfloat16")
    assert_type(qm, offloop.QuantizedMatrix)
    assert_type(offloop.blocking.top_k(q, qm, 3, rerank=m), TopK)
    assert_type(offloop.blocking.cosine_similarities(qs, qm), F32)
    assert_type(offloop.blocking.run(scale, m, by=2.0), F32)
    assert_type(offloop.blocking.run(sum, [1, 2]), int)
    assert_type(doubled.blocking(2.0), float)
    assert_type(lengths.blocking("abcd"), int)


def pool() -> None:
    assert_type(offloop.configure(threads=2), None)
    assert_type(offloop.configure(max_queue=None), None)
    assert_type(offloop.configure(max_batch=8), None)
    assert_type(offloop.configure(), None)
    assert_type(offloop.stats(), dict[str, int])
    assert_type(offloop.stats()["threads"], int)
    assert_type(offloop.get_include(), str)
    assert_type(offloop.get_cmake_dir(), str)
    assert_type(offloop.__version__, str)
    assert_type(offloop.SHUTDOWN_TIMEOUT, float)


def _rejected() -> None:
    """Type-checked only: every call here is an error."""
    offloop.top_k("not numbers", m)  # type: ignore[arg-type]
    offloop.top_k(q, m, k="3")  # type: ignore[arg-type]
    offloop.top_k(q, m, 3, True)  # type: ignore[call-arg]
    offloop.run(scale, m)  # type: ignore[call-arg]
    offloop.run(scale, m, "2")  # type: ignore[arg-type]
    offloop.blocking.run(scale, m, by="2")  # type: ignore[arg-type]
    offloop.configure(threads="2")  # type: ignore[arg-type]
    doubled("2")  # type: ignore[arg-type]
    offloop.batched(double_all, max_batch="3")  # type: ignore[call-overload]
    offloop.batched(len)  # type: ignore[arg-type]
    offloop.quantize(m, "float16")  # type: ignore[arg-type]
    offloop.blocking.top_k(q, m, rerank="m")  # type: ignore[arg-type]
    x: str = offloop.blocking.cosine_similarity(q, q)  # type: ignore[assignment]
    del x


def main(kinds: list[str]) -> None:
    for kind in kinds:
        factory: Callable[[], asyncio.AbstractEventLoop]
        if kind == "uvloop":
            import uvloop
            factory = uvloop.new_event_loop
        else:
            factory = asyncio.new_event_loop
        loop = factory()
        try:
            loop.run_until_complete(awaitables())
        finally:
            loop.close()
    blocking()
    pool()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1:] or ["asyncio"])
