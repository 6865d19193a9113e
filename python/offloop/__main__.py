"""``python -m offloop``: paths for build systems, and version info.

``--include`` prints the folder of ``offloop.h``; ``--cmake-dir`` prints
the folder of ``offloopConfig.cmake`` (CMake's ``offloop_DIR``).  Without
an option it prints the version and both paths.
"""

import argparse
import sys
from collections.abc import Sequence

from ._build import get_cmake_dir, get_include


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and print what it asks for; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m offloop",
        description="Paths to offloop's C API, for build systems.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--include", action="store_true",
                       help="print the folder of offloop.h")
    group.add_argument("--cmake-dir", action="store_true",
                       help="print the folder of offloopConfig.cmake")
    args = parser.parse_args(argv)
    if args.include:
        print(get_include())
    elif args.cmake_dir:
        print(get_cmake_dir())
    else:
        from . import __version__
        print(f"offloop {__version__}")
        print(f"include:   {get_include()}")
        print(f"cmake-dir: {get_cmake_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
