# Type stubs for offloop._batched (a stub, so that Batched stays a plain
# class at run time): Batched[I, R] wraps fn(list[I]) -> Iterable[R] as
# an awaitable per-item call, and a blocking twin.  Batched is generic
# here only: at run time it is not subscriptable, so write Batched[I, R]
# in quotes or under `from __future__ import annotations`.  fn's result
# is any iterable (the C code takes PySequence_Fast of it), numpy arrays
# included, whose items are then Any.
from collections.abc import Callable, Iterable
from typing import Generic, SupportsIndex, TypeVar, overload

from ._core import Future

_I = TypeVar("_I")
_R = TypeVar("_R")

DEFAULT_MAX_BATCH: int

class Batched(Generic[_I, _R]):
    fn: Callable[[list[_I]], Iterable[_R]]
    max_batch: int
    def __init__(
        self,
        fn: Callable[[list[_I]], Iterable[_R]],
        *,
        max_batch: SupportsIndex = 64,
    ) -> None: ...
    def __call__(self, item: _I) -> Future[_R]: ...
    def blocking(self, item: _I) -> _R: ...

@overload
def batched(
    fn: Callable[[list[_I]], Iterable[_R]],
    /,
    *,
    max_batch: SupportsIndex = 64,
) -> Batched[_I, _R]: ...
@overload
def batched(
    fn: None = None, /, *, max_batch: SupportsIndex = 64
) -> Callable[[Callable[[list[_I]], Iterable[_R]]], Batched[_I, _R]]: ...
