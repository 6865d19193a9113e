"""The kernel ISAs this CPU runs, for tests that compare every path with
the portable one (the ``isa`` fixture in conftest.py forces each)."""

from offloop import _core


def _supported_isas():
    prev = _core._isa()
    out = []
    try:
        for name in ("scalar", "avx2", "avx512"):
            try:
                _core._set_isa(name)  # ValueError: this CPU cannot
            except ValueError:
                continue
            out.append(name)
    finally:
        _core._set_isa(prev)
    return out


ISAS = _supported_isas()
