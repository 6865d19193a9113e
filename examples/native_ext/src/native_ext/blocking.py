"""Blocking twins of :mod:`native_ext`: same names and arguments.

The calling thread waits for offloop's pool with the GIL released: for
Flask, Celery and plain scripts.
"""

from ._native import double_batched_blocking as double_batched
from ._native import double_blocking as double
from ._native import process_numbers_blocking as process_numbers
from ._native import sum_squares_blocking as sum_squares

__all__ = ["double", "double_batched", "process_numbers", "sum_squares"]
