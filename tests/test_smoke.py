from offloop import _testing


async def test_noop_resolves(loop):
    assert await _testing.noop() is None
