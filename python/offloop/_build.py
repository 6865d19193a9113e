"""Where build systems find offloop's C API: its header and CMake package.

Used by ``python -m offloop --include`` / ``--cmake-dir`` and re-exported
as :func:`offloop.get_include` and :func:`offloop.get_cmake_dir`.
"""

import pathlib

_PKG = pathlib.Path(__file__).resolve().parent


def get_include() -> str:
    """The folder holding ``offloop.h``, the public C API header.

    Returns
    -------
    str
        ``offloop/include`` inside the installed package; for an editable
        install, the ``include`` folder of the source tree.

    Raises
    ------
    FileNotFoundError
        If neither holds ``offloop.h`` (a broken install).

    Examples
    --------
    >>> import offloop
    >>> import os.path
    >>> os.path.exists(os.path.join(offloop.get_include(), "offloop.h"))
    True
    """
    for folder in (_PKG / "include", _PKG.parent.parent / "include"):
        if (folder / "offloop.h").is_file():
            return str(folder)
    raise FileNotFoundError(
        f"offloop.h is missing: looked in {_PKG / 'include'} and "
        f"{_PKG.parent.parent / 'include'}; reinstall offloop"
    )


def get_cmake_dir() -> str:
    """The folder holding ``offloopConfig.cmake``, for ``offloop_DIR``.

    Returns
    -------
    str
        Pass it to CMake as ``-Doffloop_DIR=...`` (or set ``offloop_DIR``),
        then ``find_package(offloop CONFIG REQUIRED)`` and link the
        header-only target ``offloop::headers``.
    """
    return str(_PKG / "cmake")
