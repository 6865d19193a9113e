"""The benchmark scripts still load and parse their options: a broken
benchmark shows here, without timing anything.  Also the shared module's
contract: one definition of a percentile, rotated rounds, the CSV's
columns, and no script importing another."""

import ast
import asyncio
import csv
import pathlib
import subprocess
import sys

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(BENCH.glob("bench_*.py"))


@pytest.fixture(scope="module")
def common():
    sys.path.insert(0, str(BENCH))
    try:
        import _common
        yield _common
    finally:
        sys.path.remove(str(BENCH))


def test_there_are_benchmarks():
    assert {p.name for p in SCRIPTS} >= {
        "bench_bridge.py", "bench_vectors.py", "bench_fastapi.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_prints_its_help(script):
    proc = subprocess.run([sys.executable, str(script), "--help"],
                          capture_output=True, text=True, timeout=60,
                          cwd=BENCH.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:"), proc.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_no_script_imports_another(script):
    tree = ast.parse(script.read_text(), str(script))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not {m for m in imported if m.startswith("bench_")}


def test_percentile_is_numpys_linear_interpolation(common):
    rng = np.random.default_rng(5)
    for n in (2, 3, 10, 101, 1000):
        values = list(rng.standard_normal(n))
        for p in (1, 50, 90, 99):
            assert common.percentile(values, p) == pytest.approx(
                np.percentile(values, p), rel=1e-12, abs=1e-12)
    assert common.percentile([4.0], 99) == 4.0
    assert np.isnan(common.percentile([], 50))
    assert common.percentile([3.0, 1.0, 2.0], 50) == 2.0  # any order


def test_run_rounds_rotates_and_skips_the_warm_up(common):
    calls, recorded = [], []

    def impl(name):
        async def go():
            calls.append(name)
            return name.upper()
        return go

    res = asyncio.run(common.run_rounds(
        [(n, impl(n)) for n in "abc"], rounds=3, warmup=1,
        on_round=lambda name, rnd, value: recorded.append((rnd, value))))
    assert calls == list("cab" "abc" "bca" "cab")
    assert res == {"a": ["A"] * 3, "b": ["B"] * 3, "c": ["C"] * 3}
    assert [r for r, _ in recorded] == [0] * 3 + [1] * 3 + [2] * 3


def test_recorder_writes_where_and_on_what_it_was_measured(common, tmp_path):
    rec = common.Recorder("bench_x", ("loop", "seconds"), "20250101-000000",
                          "abc123", isa="avx2")
    rec.add(loop="asyncio", seconds="0.5")
    with pytest.raises(ValueError, match="no CSV column"):
        rec.add(lopo="typo")
    assert rec.default_path().endswith("bench_x-20250101-000000.csv")
    path = rec.write(str(tmp_path / "out" / "x.csv"))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["run", "commit", "machine", "python", "isa",
                             "loop", "seconds"]
    assert rows[0]["commit"] == "abc123" and rows[0]["loop"] == "asyncio"
    assert rows[0]["python"] == ".".join(map(str, sys.version_info[:3]))
