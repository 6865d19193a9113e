"""Fresh interpreters for tests: what a scenario needs that pytest's own
process cannot give (resource limits, interpreter exit, a pool that never
started, fork before any job).

``run_python(script, kind)`` runs ``PRELUDE + script`` with ``python -c``,
the loop kind ("asyncio" or "uvloop", parametrize with
``loop_kinds.LOOPS``) as ``sys.argv[1]``.  The prelude imports asyncio,
sys, offloop and offloop._testing and defines ``KIND`` and ``new_loop``,
the kind's loop factory.  ``PYTHONASYNCIODEBUG`` is dropped from the
child's environment: asyncio's debug mode (one CI stage sets it) logs slow
callbacks on stderr, and these tests check what offloop prints there.
"""

import os
import subprocess
import sys
import textwrap

PRELUDE = textwrap.dedent("""
    import asyncio, sys
    import offloop
    from offloop import _testing

    KIND = sys.argv[1]
    if KIND == "uvloop":
        import uvloop
        new_loop = uvloop.new_event_loop
    else:
        new_loop = asyncio.new_event_loop
""")


def run_python(script, kind, *, timeout, args=()):
    """Run ``PRELUDE + script`` (dedented) in a fresh interpreter.

    Parameters
    ----------
    script : str
        The scenario; it may use ``KIND``, ``new_loop``, ``offloop`` and
        ``_testing``.
    kind : str
        "asyncio" or "uvloop": ``sys.argv[1]`` and ``KIND``.
    timeout : float
        Seconds before the child is killed as hung
        (``subprocess.TimeoutExpired`` fails the test).
    args : sequence of str
        Options for the interpreter itself, before ``-c`` (``-W ...``).

    Returns
    -------
    subprocess.CompletedProcess
        With text ``stdout`` and ``stderr``.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}
    return subprocess.run(
        [sys.executable, *args, "-c", PRELUDE + textwrap.dedent(script),
         kind],
        capture_output=True, text=True, env=env, timeout=timeout,
        check=False)
