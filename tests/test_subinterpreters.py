"""Subinterpreters are refused: importing offloop in any interpreter but
the main one raises ImportError, and the main interpreter's offloop is
never affected (its pool, its exit, fork).

Each case runs in a fresh process: a failure here could abort it."""

import re
import subprocess
import sys
import textwrap

import pytest

SCRIPT = r'''
import asyncio, os, sys, tempfile
try:
    import _interpreters as interps          # 3.13+
except ImportError:
    import _xxsubinterpreters as interps     # 3.11, 3.12
import offloop

CONFIG = sys.argv[1]


def create():
    if CONFIG == "default":
        return interps.create()
    if hasattr(interps, "new_config"):      # 3.13+
        return interps.create(CONFIG)
    return interps.create(isolated=(CONFIG == "isolated"))  # 3.12


def run_in(interp, code):
    if hasattr(interps, "exec"):
        failure = interps.exec(interp, code)
        assert failure is None, failure
    else:
        interps.run_string(interp, code)


def here():
    return interps.get_current()


main = interps.get_main()
assert offloop.blocking.run(here) == main
out = tempfile.mktemp()
sub = create()
run_in(sub, f"""
try:
    import offloop
    outcome = "imported"
except ImportError as exc:
    outcome = "refused: " + str(exc)
with open({out!r}, "w") as f:
    f.write(outcome)
""")
with open(out) as f:
    outcome = f.read()
os.unlink(out)
print(outcome)
assert outcome.startswith("refused"), outcome

# The main interpreter's offloop, before and after the subinterpreter ends.
assert offloop.blocking.run(here) == main
interps.destroy(sub)
assert offloop.blocking.run(here) == main


async def awaited():
    return await offloop.run(here)


assert asyncio.run(awaited()) == main
pid = os.fork()
if pid == 0:
    os._exit(0 if offloop.blocking.run(here) == main else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
print("main ok")
'''


def _configs():
    configs = ["default"]
    if sys.version_info >= (3, 12):
        configs += ["isolated", "legacy"]
    return configs


@pytest.mark.parametrize("config", _configs())
def test_regr_subinterpreter_import_is_refused_and_main_unaffected(config):
    proc = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c",
         textwrap.dedent(SCRIPT), config],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # offloop's own message, or on 3.12+ CPython's for a module that
    # declares Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED.
    assert re.search(r"^refused: .*(cannot be imported in a subinterpreter"
                     r"|does not support loading in subinterpreters)",
                     proc.stdout, re.M), proc.stdout
    assert "main ok" in proc.stdout
    assert "Fatal" not in proc.stderr
