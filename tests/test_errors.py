"""Bad input raises a clear TypeError/ValueError naming the argument, at the
call, before anything is queued (DESIGN invariant 10)."""

import asyncio

import pytest

import offloop
from offloop import _testing

BAD_CALLS = [
    (lambda: offloop.run(42), TypeError, "fn"),
    (lambda: offloop.run(), TypeError, "fn"),
    (lambda: _testing.spin("x"), TypeError, "iterations"),
    (lambda: _testing.spin(1.5), TypeError, "iterations"),
    (lambda: _testing.spin(True), TypeError, "iterations"),
    (lambda: _testing.spin(-1), ValueError, "iterations"),
    (lambda: _testing.spin(2 ** 64), ValueError, "iterations"),
    (lambda: _testing.sleep("1"), TypeError, "seconds"),
    (lambda: _testing.sleep(-0.5), ValueError, "seconds"),
    (lambda: _testing.sleep(float("nan")), ValueError, "seconds"),
    (lambda: _testing.sleep(float("inf")), ValueError, "seconds"),
    (lambda: _testing.fail(3), TypeError, "message"),
]


@pytest.mark.parametrize("call, error, name", BAD_CALLS)
async def test_bad_argument_raises_naming_it_and_queues_nothing(
        loop, call, error, name):
    before = offloop.stats()["submitted"]
    with pytest.raises(error, match=name):
        call()
    assert offloop.stats()["submitted"] == before


BLOCKING_BAD_CALLS = [
    (lambda: offloop.blocking.run("not callable"), TypeError, "fn"),
    (lambda: _testing.blocking.spin("x"), TypeError, "iterations"),
    (lambda: _testing.blocking.sleep(-1), ValueError, "seconds"),
    (lambda: _testing.blocking.fail(None), TypeError, "message"),
]


@pytest.mark.parametrize("call, error, name", BLOCKING_BAD_CALLS)
def test_blocking_bad_argument_raises_naming_it(call, error, name):
    before = offloop.stats()["submitted"]
    with pytest.raises(error, match=name):
        call()
    assert offloop.stats()["submitted"] == before


@pytest.mark.parametrize("kwargs, error, name", [
    ({"threads": 0}, ValueError, "threads"),
    ({"threads": -2}, ValueError, "threads"),
    ({"threads": "4"}, TypeError, "threads"),
    ({"threads": 2.0}, TypeError, "threads"),
    ({"threads": 10 ** 30}, ValueError, "threads"),
    ({"max_queue": -1}, ValueError, "max_queue"),
    ({"max_queue": 0}, ValueError, "max_queue"),
    ({"max_queue": "x"}, TypeError, "max_queue"),
])
def test_configure_rejects_bad_values_and_keeps_the_pool(kwargs, error, name):
    threads = offloop.stats()["threads"]
    with pytest.raises(error, match=name):
        offloop.configure(**kwargs)
    assert offloop.stats()["threads"] == threads


def test_configure_resizes_the_pool_and_back():
    default = offloop.stats()["threads"]
    try:
        offloop.configure(threads=1)
        assert offloop.stats()["threads"] == 1
        assert _testing.blocking.spin(5) == _testing.spin_reference(5)
        offloop.configure(threads=3, max_queue=1000)
        s = offloop.stats()
        assert (s["threads"], s["max_queue"]) == (3, 1000)

        async def many():
            return await asyncio.gather(*(_testing.spin(i)
                                          for i in range(300)))
        assert asyncio.run(many()) == [_testing.spin_reference(i)
                                       for i in range(300)]
    finally:
        offloop.configure()
    s = offloop.stats()
    assert (s["threads"], s["max_queue"]) == (default, 0)
