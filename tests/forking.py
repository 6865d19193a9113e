"""fork() for tests: a child that always ends in os._exit().

The child runs a function and reports its JSON-able result (or, if it
raised, its traceback) through a pipe, so a failing child never runs the
rest of pytest; it kills itself with SIGALRM past CHILD_DEADLINE.  The
parent waits on a pidfd with a deadline and kills a child that outlives
it (the exit code then reads -9).
"""

import json
import os
import select
import signal
import traceback

CHILD_DEADLINE = 20  # seconds; the child kills itself (SIGALRM) after it
WAIT_DEADLINE = 25   # seconds the parent waits for a child before killing


class Child:
    """A forked child: its pid, the read end of its report pipe."""

    def __init__(self, pid, rfd):
        self.pid, self.rfd = pid, rfd
        self.code = None

    def wait(self, timeout=WAIT_DEADLINE):
        """Wait for the child's exit (killing it past the deadline); return
        (exit code, report).  The report is the child's JSON, or its
        traceback text if it failed."""
        try:
            if self.code is None:
                pidfd = os.pidfd_open(self.pid)
                try:
                    ready, _, _ = select.select([pidfd], [], [], timeout)
                finally:
                    os.close(pidfd)
                if not ready:
                    self.kill()  # its exit code says so: -SIGKILL
                else:
                    _, status = os.waitpid(self.pid, 0)
                    self.code = os.waitstatus_to_exitcode(status)
            chunks = []
            # The child has exited; its grandchildren, if any, were reaped
            # by it, so the pipe is at EOF once drained.
            while select.select([self.rfd], [], [], 5)[0]:
                chunk = os.read(self.rfd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            text = b"".join(chunks).decode(errors="replace")
        finally:
            self.close()
        try:
            report = json.loads(text)
        except ValueError:
            report = text
        return self.code, report

    def kill(self):
        if self.code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status = os.waitpid(self.pid, 0)
            self.code = os.waitstatus_to_exitcode(status)

    def close(self):
        if self.rfd is not None:
            os.close(self.rfd)
            self.rfd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        self.close()


def fork(child_fn):
    """Fork; the child runs child_fn() and reports its JSON-able result
    through a pipe, then os._exit(0); any error: its traceback, then
    os._exit(1).  Returns a Child in the parent."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(rfd)
            # Not pytest-timeout's handler: a stuck child just dies.
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(CHILD_DEADLINE)
            out = json.dumps(child_fn()).encode()
            code = 0
        except BaseException:
            out = traceback.format_exc()[-8000:].encode()
        finally:
            try:
                os.write(wfd, out)
            except BaseException:
                pass
            os._exit(code)
    os.close(wfd)
    return Child(pid, rfd)
