"""The two kinds of event loop, for tests that make their own loops (in
subprocesses, or around fork) rather than take conftest's per-test loop:
parametrize with LOOPS; the uvloop case is skipped when it is missing."""

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None

LOOPS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param("uvloop", id="uvloop", marks=pytest.mark.skipif(
        uvloop is None, reason="uvloop is not installed")),
]
