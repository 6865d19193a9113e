"""Loop factories (every async test runs on asyncio and uvloop), a loop
fixture that fails the test on any unhandled loop error, and a leak check
after every test."""

import asyncio

import pytest
import pytest_asyncio

from isas import ISAS
from offloop import _core, _testing

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None


def pytest_asyncio_loop_factories(config, item):
    factories = {"asyncio": asyncio.new_event_loop}
    if uvloop is not None:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


@pytest_asyncio.fixture
async def loop():
    """The running loop; fails the test on any unhandled loop error."""
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
    yield loop
    assert not errors, errors


@pytest.fixture(autouse=True)
def no_leaked_jobs():
    """Every job a test submitted has ended and been released."""
    yield
    assert _testing.wait_idle(30), "the pool did not go idle"
    assert _testing.live_jobs() == 0


@pytest.fixture(params=ISAS)
def isa(request):
    """Each test that takes it runs once per ISA, forced, then restored."""
    prev = _core._set_isa(request.param)
    yield request.param
    _core._set_isa(prev)
