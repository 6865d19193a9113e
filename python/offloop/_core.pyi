# Type stubs for the C extension offloop._core.
#
# Inputs of the vector kernels: anything with the buffer protocol
# (collections.abc.Buffer, PEP 688), numpy float arrays, and sequences of
# numbers.  numpy's ndarray declares __buffer__ only for Python 3.12+, so
# before 3.12 a type checker does not see an ndarray as a Buffer: the
# ndarray types are listed beside Buffer for that reason.
#
# Integer parameters are `SupportsIndex`: the C entry points take what
# operator.index() takes (int, numpy integers, any __index__ type).  bool
# is refused at run time although a type checker sees it as an int.
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import (
    Any,
    Literal,
    ParamSpec,
    SupportsIndex,
    TypeAlias,
    TypeVar,
    final,
    overload,
)

import numpy as np
import numpy.typing as npt

from ._quantized import QuantizedMatrix

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

_T = TypeVar("_T")
_P = ParamSpec("_P")

@final
class Future(asyncio.Future[_T]):
    """An asyncio.Future whose cancel() reaches the job."""

def configure(
    threads: SupportsIndex | None = None,
    max_queue: SupportsIndex | None = None,
    *,
    max_batch: SupportsIndex | None = None,
) -> None: ...
def stats() -> dict[str, int]: ...
def run(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]: ...
def run_blocking(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T: ...
def noop() -> Future[None]: ...
def noop_blocking() -> None: ...
def spin(iterations: SupportsIndex, /) -> Future[int]: ...
def spin_blocking(iterations: SupportsIndex, /) -> int: ...
def sleep(seconds: float | SupportsIndex, /) -> Future[None]: ...
def sleep_blocking(seconds: float | SupportsIndex, /) -> None: ...
def fail(message: str, /) -> Future[None]: ...
def fail_blocking(message: str, /) -> None: ...
def live_jobs() -> int: ...
def wait_idle(timeout: float, /) -> bool: ...
def _shutdown(timeout: float, /) -> bool: ...

# Vector kernels (vectors.c).  float32 C-contiguous buffers are read in
# place; float64 buffers and sequences of numbers are converted once.
_Floats: TypeAlias = npt.NDArray[np.floating[Any]]
_Vector: TypeAlias = Buffer | _Floats | Sequence[float]
_Matrix: TypeAlias = Buffer | _Floats | Sequence[Sequence[float]]
_Vectors: TypeAlias = Buffer | _Floats | Sequence[float] | Sequence[Sequence[float]]
# out=: a writable float32 C-contiguous buffer; the call returns it.
_Out = TypeVar("_Out", bound=Buffer | npt.NDArray[np.float32])
_F32: TypeAlias = npt.NDArray[np.float32]
_TopK: TypeAlias = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]

def cosine_similarity(a: _Vector, b: _Vector) -> Future[float]: ...
def cosine_similarity_blocking(a: _Vector, b: _Vector) -> float: ...
@overload
def batch_normalize(x: _Matrix, *, out: None = None) -> Future[_F32]: ...
@overload
def batch_normalize(x: _Matrix, *, out: _Out) -> Future[_Out]: ...
@overload
def batch_normalize_blocking(x: _Matrix, *, out: None = None) -> _F32: ...
@overload
def batch_normalize_blocking(x: _Matrix, *, out: _Out) -> _Out: ...
def cosine_similarities(q: _Vectors, m: _Matrix | QuantizedMatrix) -> Future[_F32]: ...
def cosine_similarities_blocking(q: _Vectors, m: _Matrix | QuantizedMatrix) -> _F32: ...
def top_k(
    q: _Vectors,
    m: _Matrix | QuantizedMatrix,
    k: SupportsIndex = 10,
    *,
    normalized: bool = False,
    rerank: _Matrix | None = None,
) -> Future[_TopK]: ...
def top_k_blocking(
    q: _Vectors,
    m: _Matrix | QuantizedMatrix,
    k: SupportsIndex = 10,
    *,
    normalized: bool = False,
    rerank: _Matrix | None = None,
) -> _TopK: ...
def _stream_read(buffer: Buffer | npt.NDArray[Any], variant: int, /) -> int: ...
def _stream_read_names() -> list[str]: ...
# quantize (quantize.c): offloop._quantized.quantize is the public face.
def _quantize(
    m: _Matrix,
    codes: npt.NDArray[np.uint16] | npt.NDArray[np.int8],
    scales: npt.NDArray[np.float32] | None,
    result: QuantizedMatrix,
) -> Future[QuantizedMatrix]: ...
def _quantize_blocking(
    m: _Matrix,
    codes: npt.NDArray[np.uint16] | npt.NDArray[np.int8],
    scales: npt.NDArray[np.float32] | None,
    result: QuantizedMatrix,
) -> QuantizedMatrix: ...
def _set_isa(name: Literal["scalar", "avx2", "avx512"], /) -> str: ...
def _isa() -> str: ...
