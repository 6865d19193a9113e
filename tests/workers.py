"""Hold every worker of the pool, so that the jobs a test submits wait in
the queue together (coalescing tests).  The holders are
``offloop.blocking.run`` calls from threads, so the context manager works
in sync and async tests alike.  test_invariants.py holds workers with
native sleep jobs instead: its invariant is that workers never need
Python."""

import contextlib
import threading

import offloop


@contextlib.contextmanager
def held_workers():
    """Every worker waits inside a callable until the block ends."""
    threads = offloop.stats()["threads"]
    started, release = threading.Semaphore(0), threading.Event()
    holders = []

    def hold():
        started.release()
        return release.wait(30)

    for _ in range(threads):
        t = threading.Thread(target=offloop.blocking.run, args=(hold,))
        t.start()
        holders.append(t)
    for _ in range(threads):
        assert started.acquire(timeout=10), "a worker never took its holder"
    try:
        yield
    finally:
        release.set()
        for t in holders:
            t.join(10)
