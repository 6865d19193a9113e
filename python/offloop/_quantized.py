"""Quantized matrices: rows stored in bfloat16 or int8 for the kernels.

:func:`offloop.quantize` makes a :class:`QuantizedMatrix` on the pool;
``top_k`` and ``cosine_similarities`` (awaitable and blocking) accept one in
place of a float32 matrix.  Its arrays are plain numpy arrays, so it is
saved and loaded with numpy and rebuilt with the constructor::

    np.savez("emb.npz", **qm.arrays())
    qm = offloop.QuantizedMatrix(**np.load("emb.npz"))
    # or, memory-mapped: QuantizedMatrix(np.load("codes.npy", mmap_mode="r"),
    #                                    np.load("scales.npy"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from . import _core

if TYPE_CHECKING:  # import offloop does not import numpy
    import numpy
    import numpy.typing as npt

#: dtype name -> (the kernels' code type, the codes' numpy dtype name)
_DTYPES = {"bfloat16": (1, "uint16"), "int8": (2, "int8")}


class QuantizedMatrix:
    """N x D rows, each divided by its L2 norm, stored as codes.

    ``bfloat16``: ``codes`` is uint16 (N, D), the top half of each float32
    of the unit row.  ``int8``: ``codes`` is int8 (N, D) and ``scales``
    float32 (N,); ``codes[i] * scales[i]`` is unit row i.  Scores against
    it are cosines (rows are unit, so ``normalized=`` has no effect).  A
    row that held NaN or inf scores NaN, ranked after every number, and
    changes no other row's score.

    Parameters
    ----------
    codes : numpy.ndarray
        uint16 (bfloat16) or int8, 2-D, C-contiguous; read-only arrays
        (``np.load(..., mmap_mode="r")``) are used in place, never copied.
    scales : numpy.ndarray, optional
        float32 (N,), C-contiguous: required for int8, None for bfloat16.
    """

    __slots__ = ("_codes", "_scales", "_dtype", "_offloop_qtype")

    def __init__(self, codes: npt.NDArray[numpy.uint16] | npt.NDArray[numpy.int8],
                 scales: npt.NDArray[numpy.float32] | None = None) -> None:
        import numpy

        if not isinstance(codes, numpy.ndarray):
            raise TypeError("QuantizedMatrix(): codes must be a numpy array, "
                            f"not {type(codes).__name__}")
        if codes.dtype == numpy.uint16:
            dtype = "bfloat16"
        elif codes.dtype == numpy.int8:
            dtype = "int8"
        else:
            raise TypeError("QuantizedMatrix(): codes must be uint16 "
                            f"(bfloat16) or int8, not {codes.dtype}")
        if codes.ndim != 2 or codes.size == 0:
            raise ValueError("QuantizedMatrix(): codes must be 2-D and not "
                             f"empty, got shape {codes.shape}")
        if not codes.flags.c_contiguous:
            raise ValueError("QuantizedMatrix(): codes must be C-contiguous")
        if dtype == "bfloat16":
            if scales is not None:
                raise ValueError("QuantizedMatrix(): scales must be None "
                                 "for bfloat16 codes")
        else:
            if not isinstance(scales, numpy.ndarray):
                raise TypeError("QuantizedMatrix(): scales must be a float32 "
                                "numpy array for int8 codes, not "
                                f"{type(scales).__name__}")
            if scales.dtype != numpy.float32 or scales.shape != codes.shape[:1]:
                raise ValueError("QuantizedMatrix(): scales must be float32 "
                                 f"of shape ({codes.shape[0]},), got "
                                 f"{scales.dtype} {scales.shape}")
            if not scales.flags.c_contiguous:
                raise ValueError("QuantizedMatrix(): scales must be "
                                 "C-contiguous")
        self._codes = codes
        self._scales = scales
        self._dtype = dtype
        self._offloop_qtype = _DTYPES[dtype][0]  # read by the C kernels

    @property
    def codes(self) -> npt.NDArray[numpy.uint16] | npt.NDArray[numpy.int8]:
        """The codes, (N, D): uint16 for bfloat16, int8 for int8."""
        return self._codes

    @property
    def scales(self) -> npt.NDArray[numpy.float32] | None:
        """int8: the per-row scales, float32 (N,); bfloat16: None."""
        return self._scales

    @property
    def dtype(self) -> Literal["bfloat16", "int8"]:
        """``"bfloat16"`` or ``"int8"``."""
        return self._dtype  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int]:
        """(N, D), as the float32 matrix it was made from."""
        return (int(self._codes.shape[0]), int(self._codes.shape[1]))

    @property
    def nbytes(self) -> int:
        """Bytes of codes and scales."""
        return int(self._codes.nbytes +
                   (0 if self._scales is None else self._scales.nbytes))

    def arrays(self) -> dict[str, numpy.ndarray]:
        """The arrays by constructor argument name, for ``numpy.savez``."""
        if self._scales is None:
            return {"codes": self._codes}
        return {"codes": self._codes, "scales": self._scales}

    def __repr__(self) -> str:
        n, d = self.shape
        return f"<QuantizedMatrix {self._dtype} {n} x {d}, {self.nbytes} bytes>"


def _prepare(m: object, dtype: object) -> tuple[npt.NDArray[numpy.float32], QuantizedMatrix]:
    """Check quantize()'s arguments and allocate the result's arrays."""
    import numpy

    if not isinstance(dtype, str):
        raise TypeError("quantize(): dtype must be 'bfloat16' or 'int8', "
                        f"not {type(dtype).__name__}")
    if dtype not in _DTYPES:
        raise ValueError("quantize(): dtype must be 'bfloat16' or 'int8', "
                         f"got {dtype!r}")
    if not isinstance(m, numpy.ndarray) or m.dtype != numpy.float32 or \
            not m.flags.c_contiguous:
        from ._vectors import _as_float32
        m = _as_float32(m, "quantize", "m")
    assert isinstance(m, numpy.ndarray)
    if m.ndim != 2 or m.size == 0:
        raise ValueError("quantize(): m must be 2-D (rows x dimensions) and "
                         f"not empty, got shape {m.shape}")
    codes = numpy.empty(m.shape, _DTYPES[dtype][1])
    scales = numpy.empty(m.shape[0], numpy.float32) if dtype == "int8" else None
    return m, QuantizedMatrix(codes, scales)


def quantize(m: npt.ArrayLike, dtype: Literal["bfloat16", "int8"]) -> _core.Future[QuantizedMatrix]:
    """Quantize the rows of ``m`` on offloop's pool; return a future.

    Each row is divided by its L2 norm, then stored as bfloat16 (2 bytes a
    value, about 3 significant digits) or int8 with a float32 scale per
    row (1 byte a value).  The rows are cut into chunks that run on every
    worker.  Queries against the result stay float32.

    Parameters
    ----------
    m : array_like
        (N, D) float32 (float64 and sequences are converted once).
    dtype : {"bfloat16", "int8"}

    Returns
    -------
    Future[QuantizedMatrix]

    Raises
    ------
    TypeError, ValueError
        At the call, naming the argument: nothing is queued.
    """
    m, qm = _prepare(m, dtype)
    return _core._quantize(m, qm.codes, qm.scales, qm)


def quantize_blocking(m: npt.ArrayLike, dtype: Literal["bfloat16", "int8"]) -> QuantizedMatrix:
    """The blocking twin of :func:`quantize` (``offloop.blocking.quantize``)."""
    m, qm = _prepare(m, dtype)
    return _core._quantize_blocking(m, qm.codes, qm.scales, qm)
