"""Checks of the source that CI must not forget: ``mypy --strict`` over
tests/typing and examples/, and stubtest of the extension's
stubs against the module itself.  Skipped where mypy, or the stubs the
mypy check needs, are not installed (``pip install -e ".[typing]"``
brings both); .ci/run installs them and runs the same
commands in its "mypy --strict" stage.  The typing check's calls also
run, with or without mypy, so that what the stubs accept is what the
functions accept."""

import importlib.metadata
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# What passes mypy --strict: the typing check and every example.
TYPED = ["tests/typing", "examples"]
# Stubs of the examples' libraries that ship none (the typing extra's).
STUBS = ["celery-types", "types-tqdm"]
CACHE = ROOT / "build" / "mypy-cache"  # build/ is git-ignored

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None


def run(*args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


def test_mypy_strict_accepts_the_public_api_as_users_call_it():
    pytest.importorskip("mypy")
    for dist in STUBS:  # mypy alone (installed by hand) is not the extra
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{dist} is not installed: pip install -e "
                        "'.[typing]'")
    proc = run("-m", "mypy", "--strict", "--cache-dir", str(CACHE), *TYPED)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_stubs_match_the_modules():
    pytest.importorskip("mypy.stubtest")
    proc = run("-m", "mypy.stubtest", "offloop._core", "offloop._batched")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_typing_checks_calls_run():
    kinds = ["asyncio"] + (["uvloop"] if uvloop is not None else [])
    proc = run("tests/typing/check_public_api.py", *kinds, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"


def test_the_package_ships_its_types():
    """PEP 561: py.typed and the extension's stubs sit beside the module
    (in CI's non-editable installs, inside site-packages)."""
    import importlib.resources

    import offloop

    pkg = importlib.resources.files(offloop)
    assert (pkg / "py.typed").is_file()
    assert (pkg / "_core.pyi").is_file()
    assert (pkg / "_batched.pyi").is_file()
