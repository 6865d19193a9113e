"""offloop.batched: many concurrent callers, one call of your function.

An "encoder" that is much cheaper per item on a batch than one item at a
time (here a matrix product, as a model's forward pass is) is wrapped with
offloop.batched.  A hundred concurrent requests each await their own
item; the calls that wait for a worker together reach the encoder as one
list.  Nothing waits for a batch to fill: a lone call runs at once.

    python examples/batched_encoder.py
"""

import asyncio
import time

import numpy as np

import offloop

rng = np.random.default_rng(0)
WEIGHTS = rng.standard_normal((512, 256), dtype=np.float32)
calls: list[int] = []  # the batch size of each encoder call


@offloop.batched(max_batch=64)
def encode(texts: list[str]) -> list[np.ndarray]:
    """A stand-in encoder: one matrix product for the whole batch."""
    calls.append(len(texts))
    features = np.stack([_features(t) for t in texts])
    vectors = features @ WEIGHTS  # releases the GIL, like a real model
    return list(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


def _features(text: str) -> np.ndarray:
    seed = sum(text.encode()) % (2**32)
    return np.random.default_rng(seed).standard_normal(512,
                                                       dtype=np.float32)


async def handle_request(i: int) -> np.ndarray:
    """What an endpoint does: await one item's result."""
    return await encode(f"product description {i}")


async def main() -> None:
    t0 = time.perf_counter()
    vectors = await asyncio.gather(*[handle_request(i) for i in range(100)])
    elapsed = time.perf_counter() - t0
    assert len(vectors) == 100 and vectors[0].shape == (256,)
    print(f"100 requests answered in {elapsed * 1e3:.1f} ms by "
          f"{len(calls)} encoder calls (batch sizes {calls})")
    alone = encode.blocking("one more, from a blocking caller")
    print(f"a blocking call: vector of {alone.shape[0]}, batch sizes now "
          f"{calls}")
    stats = offloop.stats()
    print(f"stats: {stats['batches']} coalesced runs served "
          f"{stats['batched']} calls")


if __name__ == "__main__":
    asyncio.run(main())
