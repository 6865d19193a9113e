"""The slow path of the vector kernels' argument parsing.

The C entry points (``offloop._core.cosine_similarity`` and the others) take
float32 C-contiguous buffers in place.  Anything else that may still be
accepted -- float64 buffers, and sequences of numbers -- comes here to be
converted once, at the call, with the GIL.  This module is never on the hot
path: a float32 array never reaches it.
"""

import numpy
import numpy.typing


def _as_float32(obj: object, fname: str,
                name: str) -> numpy.typing.NDArray[numpy.float32]:
    """Convert ``obj`` to a new float32 C-contiguous array.

    Parameters
    ----------
    obj : object
        A float64 buffer or a float32 one at an unaligned address
        (C-contiguous: the C code checked), or a sequence of numbers
        (nested for 2-D).
    fname, name : str
        The calling function and the argument, for error messages.

    Returns
    -------
    numpy.ndarray
        float32, C-contiguous.  Values beyond float32's range become
        +-inf, as numpy's cast does.

    Raises
    ------
    TypeError
        ``obj`` does not hold numbers (strings, objects, booleans).
    ValueError
        ``obj`` is ragged (rows of different lengths).
    """
    try:
        arr = numpy.asarray(obj)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{fname}(): {name} must be a float32 array or a rectangular "
            f"sequence of numbers ({exc})"
        ) from exc
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"{fname}(): {name} must hold float32 (or float64) values, "
            f"got dtype {arr.dtype}"
        )
    with numpy.errstate(over="ignore"):
        out = numpy.ascontiguousarray(arr, dtype=numpy.float32)
    # A float32 view at an odd address passes through unchanged above;
    # the kernels load whole floats, so copy it to aligned memory.
    return out if out.flags.aligned else out.copy()
