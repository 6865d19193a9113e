"""offloop from a plain asyncio script: native work never stalls the loop.

A heartbeat task ticks every millisecond and records how late each tick
is.  Meanwhile the script hashes 200 MB, first by calling hashlib directly
inside the coroutine (the loop stalls), then through ``offloop.run`` (the
loop keeps ticking), then runs a burst of native jobs from offloop's pool.

Run it:  python examples/asyncio_script.py [--uvloop]
"""

import argparse
import asyncio
import hashlib
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import offloop
from offloop import _testing

DATA = b"offloop" * 30_000_000  # about 200 MB

T = TypeVar("T")


async def heartbeat(lateness: list[float], stop: asyncio.Event) -> None:
    """Sleep 1 ms at a time; record how late each wake-up is, in ms."""
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        lateness.append((time.perf_counter() - t0) * 1000 - 1.0)


async def measure(label: str, work: Callable[[], Awaitable[T]]) -> T:
    lateness: list[float] = []
    stop = asyncio.Event()
    beat = asyncio.create_task(heartbeat(lateness, stop))
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    result = await work()
    elapsed = time.perf_counter() - t0
    stop.set()
    await beat
    worst = max(lateness) if lateness else float("nan")
    print(f"{label:<38} {elapsed * 1000:7.1f} ms   ticks {len(lateness):5d}"
          f"   worst tick late {worst:7.2f} ms"
          f"   median {statistics.median(lateness):5.2f} ms")
    return result


async def main() -> None:
    print(f"offloop {offloop.__version__}, "
          f"{offloop.stats()['threads']} worker threads, "
          f"loop {type(asyncio.get_running_loop()).__module__}\n")

    async def blocking_hash() -> str:
        return hashlib.sha256(DATA).hexdigest()  # runs ON the loop thread

    async def offloop_hash() -> str:
        return (await offloop.run(hashlib.sha256, DATA)).hexdigest()

    async def native_burst() -> int:
        jobs = [_testing.spin(200_000) for _ in range(2_000)]
        return len(await asyncio.gather(*jobs))

    a = await measure("sha256(200 MB) called in the coroutine", blocking_hash)
    b = await measure("sha256(200 MB) via offloop.run", offloop_hash)
    assert a == b
    n = await measure("2,000 native jobs gathered", native_burst)
    s = offloop.stats()
    print(f"\n{n} jobs resolved in {s['wakeups']} loop wake-ups "
          f"({s['resolved'] / max(s['wakeups'], 1):.0f} futures per wake-up)")
    print("The loop ticked on time while offloop worked; "
          "calling the C function directly stalled it.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    loop: asyncio.AbstractEventLoop
    if args.uvloop:
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
