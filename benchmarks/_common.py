"""What every benchmark script shares; no script imports another script.

- :func:`percentile`: the one definition of p50/p99 for every report
  (``statistics.quantiles``, method "inclusive": linear interpolation
  between the two nearest ranks, numpy's default);
- :func:`run_rounds`: warm-up, then rounds whose order of impls rotates;
- :class:`Recorder`: one CSV row per measured round, in
  ``benchmarks/results/``, each row with the run, commit, machine and
  Python it was measured on;
- :func:`verdict`, :func:`fmt_us`: how goals and small times print;
- :func:`steal_ticks` / :func:`steal_pct`: the host's share of CPU time;
- :func:`loop_factories`: asyncio and uvloop by name;
- the loop-lag probe (:func:`probe`, :func:`probe_bare_wakeups`,
  :class:`Feeder`, :func:`loaded_probe`): the overshoot of
  ``asyncio.sleep(1 ms)``, idle and while jobs keep the workers busy.

The scripts put their own folder first on ``sys.path`` (running
``python benchmarks/bench_x.py`` does), then ``import _common``.
"""

import asyncio
import csv
import gc
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
LOOPS = ("asyncio", "uvloop")
SLEEP_S = 0.001  # the loop-lag probe's sleep


# ------------------------------------------------------------ percentiles


def percentile(values, p):
    """The ``p``-th percentile (an integer, 1 to 99) of ``values``.

    ``values`` may be in any order.  ``statistics.quantiles`` with method
    "inclusive": the 1st and 100th of 100 values bound the range, and a
    percentile between two ranks is interpolated linearly (numpy's
    default).  Empty: nan; one value: that value.
    """
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


# ------------------------------------------------------------- verdicts


def verdict(ok):
    """How a goal prints: PASS or MISS."""
    return "PASS" if ok else "MISS"


def fmt_us(x):
    """Microseconds, 3 significant digits."""
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


# ---------------------------------------------- machine, commit, steal


def cpu_model():
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine():
    """Platform, CPU count and model: the header's and the CSV's."""
    return f"{platform.platform()} | {os.cpu_count()} CPUs | {cpu_model()}"


def git_commit():
    """The short commit of the tree, ``+dirty`` when src/, python/ or
    include/ have uncommitted changes (rebuild before you measure)."""
    def git(*args):
        return subprocess.run(["git", *args], check=False, cwd=HERE,
                              capture_output=True, text=True, timeout=10)

    try:
        out = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--",
                    "src", "python", "include")
        if out.returncode == 0:
            commit = out.stdout.strip()
            if dirty.returncode == 0 and dirty.stdout.strip():
                commit += "+dirty"
            return commit
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def steal_ticks():
    """(steal, total) jiffies of all CPUs so far, from /proc/stat.

    Steal is the time the hypervisor ran something else while this VM had
    work: on a shared VM it, not our code, can set a run's tails.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    # user nice system idle iowait irq softirq steal (guest is in user)
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_pct(before, after):
    """Percent of CPU time stolen between two steal_ticks() readings."""
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else 0.0


# ---------------------------------------------------------------- results


class Recorder:
    """One CSV row per measured round, for ``benchmarks/results/``.

    Every row starts with the run (its timestamp), the commit, the machine
    and the Python version, then ``constant`` (values the same for the
    whole run, such as the kernels' ISA), then the script's own ``fields``
    (the loop among them).  Values are written as given: format floats
    before :meth:`add`.
    """

    BASE = ("run", "commit", "machine", "python")

    def __init__(self, script, fields, run_id, commit, **constant):
        self.script = script
        self.run_id = run_id
        self.fields = self.BASE + tuple(constant) + tuple(fields)
        self.base = {"run": run_id, "commit": commit, "machine": machine(),
                     "python": platform.python_version(), **constant}
        self.rows = []

    def add(self, **row):
        unknown = set(row) - set(self.fields)
        if unknown:
            raise ValueError(f"{self.script}: no CSV column {unknown}")
        self.rows.append({**self.base, **row})

    def default_path(self):
        return os.path.join(RESULTS, f"{self.script}-{self.run_id}.csv")

    def write(self, path=None):
        """Write every row (to ``default_path()`` unless ``path``);
        return the path."""
        path = path or self.default_path()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, restval="")
            w.writeheader()
            w.writerows(self.rows)
        return path


# ----------------------------------------------------------------- rounds


def rotated(items, k):
    """``items`` rotated left by ``k`` (any integer)."""
    k %= len(items)
    return items[k:] + items[:k]


async def run_rounds(impls, rounds, warmup=0, on_round=None):
    """Run each impl once per round, in an order rotated from round to
    round, after ``warmup`` unrecorded rounds.

    Rotation spreads the machine's slow drift over every impl, and no impl
    always runs after the heaviest one.  ``gc.collect()`` runs before each
    call; the collector stays enabled.

    Parameters
    ----------
    impls : list of (name, async callable of no argument)
        Each call returns its round's measurement (seconds for
        :func:`timed` ones; any value otherwise).
    on_round : callable(name, round, value), optional
        Called for each recorded round, round numbered from 0.

    Returns
    -------
    dict
        {name: [value of each recorded round]}.
    """
    results = {name: [] for name, _ in impls}
    for rnd in range(-warmup, rounds):
        for name, fn in rotated(impls, rnd):
            gc.collect()
            value = await fn()
            if rnd >= 0:
                results[name].append(value)
                if on_round is not None:
                    on_round(name, rnd, value)
    return results


def timed(fn):
    """An impl for run_rounds() that returns the seconds ``await fn()``
    took."""
    async def go():
        t0 = time.perf_counter()
        await fn()
        return time.perf_counter() - t0

    return go


# ------------------------------------------------------------------ loops


def loop_factories(spec, error):
    """{name: factory} for a comma-separated list of asyncio,uvloop.

    ``error(message)`` reports an unknown name (argparse's
    ``parser.error``); uvloop, when not installed, is skipped with a
    note on stderr.
    """
    factories = {}
    for name in [s.strip() for s in spec.split(",") if s.strip()]:
        if name == "asyncio":
            factories[name] = asyncio.new_event_loop
        elif name == "uvloop":
            try:
                import uvloop
            except ImportError:
                print("uvloop not installed: skipped", file=sys.stderr)
                continue
            factories[name] = uvloop.new_event_loop
        else:
            error(f"unknown loop {name!r}")
    return factories


# --------------------------------------------------------------- loop lag


async def probe(samples):
    """Overshoot of asyncio.sleep(1 ms), in seconds, sorted."""
    pc = time.perf_counter
    out = []
    for _ in range(samples):
        s = pc()
        await asyncio.sleep(SLEEP_S)
        out.append(pc() - s - SLEEP_S)
    out.sort()
    return out


async def probe_bare_wakeups(rate, samples, seed=4):
    """probe(samples) while a thread wakes the loop ``rate`` times a second
    with no CPU work at all: it writes a pipe the loop reads, as a worker's
    eventfd does.  The wakeups come at random moments (Poisson), as
    completions land relative to the probe's sleeps; a periodic writer
    falls into step with the probe and understates the cost.  What a
    bridge with that completion rate cannot go below."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    r, w = os.pipe()
    os.set_blocking(r, False)
    loop.add_reader(r, os.read, r, 4096)
    stop = threading.Event()

    def waker():
        due = time.perf_counter()
        while not stop.is_set():
            due += rng.expovariate(rate)
            time.sleep(max(0.0, due - time.perf_counter()))
            os.write(w, b"x")

    t = threading.Thread(target=waker)
    t.start()
    try:
        return await probe(samples)
    finally:
        stop.set()
        t.join()
        loop.remove_reader(r)
        os.close(r)
        os.close(w)


class Feeder:
    """Keeps ``width`` jobs in flight, resubmitting as each completes."""

    def __init__(self, submit, width):
        self.submit = submit
        self.width = width
        self.running = False
        self.inflight = set()
        self.done = 0
        self.max_submit = 0.0  # slowest submit call, seconds (loop blocked)

    def _start_one(self):
        t0 = time.perf_counter()
        fut = self.submit()
        self.max_submit = max(self.max_submit, time.perf_counter() - t0)
        self.inflight.add(fut)
        fut.add_done_callback(self._on_done)

    def _on_done(self, fut):
        self.inflight.discard(fut)
        if not fut.cancelled():
            fut.exception()  # mark retrieved; errors would show in the count
            self.done += 1
        if self.running:
            self._start_one()

    def start(self):
        self.running = True
        for _ in range(self.width):
            self._start_one()

    async def stop(self):
        self.running = False
        while self.inflight:
            await asyncio.gather(*list(self.inflight), return_exceptions=True)


async def loaded_probe(feeder, samples, settle=0.05):
    """Probe while ``feeder`` keeps the workers busy.

    Returns (overshoots, CPUs the process used, jobs completed, slowest
    submit in seconds).
    """
    feeder.start()
    await asyncio.sleep(settle)  # let every worker get going
    done0 = feeder.done
    c0 = time.process_time()  # CPU time of every thread of this process
    t0 = time.perf_counter()
    lat = await probe(samples)
    elapsed = time.perf_counter() - t0
    cores = (time.process_time() - c0) / elapsed
    jobs = feeder.done - done0
    await feeder.stop()
    return lat, cores, jobs, feeder.max_submit
