# Type stubs for the C extension native_ext._native (_native.c), so that
# mypy checks callers of native_ext as it checks callers of offloop.
#
# Numbers: an int is anything operator.index() takes (int, numpy
# integers); a bool is refused at run time although a type checker sees
# it as an int.  The awaitable functions return an offloop.Future of the
# running loop, resolved with what the blocking twins return.
import sys
from collections.abc import Sequence
from typing import SupportsIndex, TypeAlias, overload

import numpy as np
import numpy.typing as npt
from offloop import Future

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

# process_numbers(): a list or tuple of ints, or a 1-D C-contiguous int64
# buffer (a numpy array; ndarray declares __buffer__ only for Python
# 3.12+, hence listed beside Buffer); the result is a new int64 array.
_Int64s: TypeAlias = npt.NDArray[np.int64]
_Numbers: TypeAlias = Sequence[SupportsIndex] | _Int64s | Buffer

@overload
def double(x: SupportsIndex, /) -> Future[int]: ...
@overload
def double(x: float, /) -> Future[float]: ...
@overload
def double_blocking(x: SupportsIndex, /) -> int: ...
@overload
def double_blocking(x: float, /) -> float: ...

# (2 * x, how many calls shared the run)
@overload
def double_batched(x: SupportsIndex, /) -> Future[tuple[int, int]]: ...
@overload
def double_batched(x: float, /) -> Future[tuple[float, int]]: ...
@overload
def double_batched_blocking(x: SupportsIndex, /) -> tuple[int, int]: ...
@overload
def double_batched_blocking(x: float, /) -> tuple[float, int]: ...

# Both ints: an int; a float among them: a float.
@overload
def sum_squares(a: SupportsIndex, b: SupportsIndex, /) -> Future[int]: ...
@overload
def sum_squares(a: float, b: float, /) -> Future[float]: ...
@overload
def sum_squares_blocking(a: SupportsIndex, b: SupportsIndex, /) -> int: ...
@overload
def sum_squares_blocking(a: float, b: float, /) -> float: ...

def process_numbers(
    numbers: _Numbers, rounds: SupportsIndex = 1000
) -> Future[_Int64s]: ...
def process_numbers_blocking(
    numbers: _Numbers, rounds: SupportsIndex = 1000
) -> _Int64s: ...
def live_contexts() -> int: ...
