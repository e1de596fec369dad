"""The benchmark command keeps working: a quick run of cheap sections, as a user types it.

This checks that the tables and both results files appear with the expected sections, rows and
numbers. It never asserts speed: the numbers are docs/performance.md's business.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["calls", "start"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("bench-results")
    environ = {k: v for k, v in os.environ.items() if k != "ENVRUNNER_HOME"}
    result = run_benchmark(["run.py", "--quick", "--only", *SECTIONS, "--out", str(out)], environ)
    return result.stdout, out


@pytest.mark.slow
def test_quick_run_prints_a_table_per_section_and_the_targets(quick_run: tuple[str, Path]) -> None:
    stdout, _ = quick_run
    assert "== 1. Call overhead" in stdout
    assert "== 3. Worker start" in stdout
    assert "== 2. Bulk data" not in stdout  # --only is honoured
    assert "== Targets" in stdout
    header = next(line for line in stdout.splitlines() if line.startswith("case "))
    for column in ("system", "median", "p99", "unit", "÷ baseline"):
        assert column in header
    assert "CPU:" in stdout
    assert "pyzmq" in stdout


@pytest.mark.slow
def test_quick_run_writes_markdown_and_json_with_numbers(quick_run: tuple[str, Path]) -> None:
    _, out = quick_run
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# envrunner benchmarks")
    assert "## 1. Call overhead" in markdown
    assert "## 3. Worker start" in markdown
    assert "| case | system | median | p99 |" in markdown
    assert "## Targets" in markdown

    document = json.loads((out / "results.json").read_text())
    assert document["command"].startswith("python benchmarks/run.py --quick --only calls start")
    machine = document["machine"]
    assert machine["cores"] >= 1
    assert machine["packages"]["pyzmq"]
    assert set(document["sections"]) == set(SECTIONS)
    for name, section in document["sections"].items():
        rows = section["rows"]
        assert rows, name
        for row in rows:
            for key in ("median", "p99"):
                assert isinstance(row[key], float) and math.isfinite(row[key]), row
                assert row[key] > 0, row
            assert row["n"] >= 1
    calls = document["sections"]["calls"]["rows"]
    systems = {row["system"] for row in calls}
    assert "raw pyzmq" in systems
    assert "multiprocessing.Pool" in systems
    assert any(s.startswith("envrunner (") for s in systems)
    cases = {row["case"] for row in calls}
    assert {"sync call, tiny argument", "pipelined, 1 worker", "pipelined, 2 workers"} <= cases
    assert {  # the cases of issue 14
        "pipelined, task sleeps 1 ms",
        "map over 100,000 items, chunksize 1000",
        "sync call over tcp + CurveZMQ",
        "pipelined over tcp + CurveZMQ, 1 worker",
    } <= cases
    assert "raw pyzmq (tcp, Curve)" in systems
    assert "multiprocessing.Pool.map" in systems
    for row in calls:
        if not row["baseline"]:
            assert row["ratio"] > 0, row
    start = document["sections"]["start"]["rows"]
    assert any(row["system"] == "envrunner: first call, new Runner" for row in start)
    verdicts = {target["verdict"] for target in document["targets"]}
    named = " ".join(target["target"] for target in document["targets"])
    for target in ("at least multiprocessing.Pool's", "2 workers at least 1.7x 1 worker"):
        assert target in named
    assert "at least multiprocessing.Pool.map's" in named
    assert "raw pyzmq over tcp with Curve" in named
    assert verdicts <= {"PASS", "MISS"} and verdicts


@pytest.mark.slow
def test_missing_alternatives_are_skipped_with_a_note(quick_run: tuple[str, Path]) -> None:
    _, out = quick_run
    document = json.loads((out / "results.json").read_text())
    notes = " ".join(document["sections"]["calls"]["notes"])
    systems = {row["system"] for row in document["sections"]["calls"]["rows"]}
    for package, system in (("execnet", "execnet"), ("ray", "Ray tasks")):
        if document["machine"]["packages"][package] is None:
            assert f"{system} skipped" in notes
            assert system not in systems
        else:
            assert system in systems


@pytest.mark.slow
def test_the_workflow_benchmark_runs_a_small_graph(tmp_path: Path) -> None:
    environ = dict(os.environ, ENVRUNNER_HOME=str(tmp_path / "home"))
    result = run_benchmark(["workflow_bench.py", "--tasks", "200", "--length", "10"], environ)
    assert "202 tasks: 20 chains of 10, fan-ins of 100" in result.stdout
    assert "(reference) envrunner, independent calls" in result.stdout
    graph = next(
        line for line in result.stdout.splitlines() if "envrunner, futures as arguments" in line
    )
    assert "µs/task" in graph  # futures as arguments are measured, not skipped


def run_benchmark(argv: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a script of benchmarks/ from the repository's root; it must succeed."""
    result = subprocess.run(
        [sys.executable, f"benchmarks/{argv[0]}", *argv[1:]],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result
