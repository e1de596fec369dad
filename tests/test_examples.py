"""The examples, run as a user runs them: a fresh process, from the repository's root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env or dict(os.environ),
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_quickstart_hands_an_array_from_numpy_1_to_numpy_2() -> None:
    out = run_example("quickstart.py")
    assert "legacy  ran on Python 3.9" in out and "numpy 1." in out
    assert "modern  ran on Python 3.12" in out and "numpy 2." in out
    assert "got {'shape': [1000, 3], 'dtype': 'float64'" in out
    assert "shapes [[500, 3], [500, 3]]" in out


def test_a_python_39_environment_runs_next_to_a_python_313_one() -> None:
    out = run_example("legacy_and_latest.py")
    assert "legacy  Python 3.9" in out and "numpy 1.21.6" in out
    assert "latest  Python 3.13" in out and "both agree: True" in out


def test_functions_written_in_the_script_travel_by_value_or_as_source() -> None:
    out = run_example("notebook_style.py")
    assert "another Python, as source: ([3, 6, 9], 'Python 3.12')" in out
    assert "a lambda: 144" in out
    assert "a closure to another Python:" in out and "closure over the local variable" in out


def test_map_spreads_over_the_workers_and_keeps_the_order() -> None:
    out = run_example("parallel_map.py")
    assert "squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in out
    assert "on 2 workers" in out


def test_the_workflow_fits_two_models_in_parallel_and_compares_them() -> None:
    """The run-twice, edit-one-step and kill-one-branch cases: tests/test_workflows.py."""
    out = run_example("workflow.py")
    assert "line: y = 3.000 x + 2.002" in out and "mean: y = 0.000 x + 3.465" in out
    assert "model    six        mse" in out  # compare's table, made where tabulate is
    assert "line     1.15.0" in out and "mean     1.16.0" in out


@pytest.mark.frameworks
def test_torch_trains_and_tensorflow_evaluates_in_one_script() -> None:
    """Real frameworks: a large first download. Run with ENVRUNNER_TEST_FRAMEWORKS=1 .ci/run,
    or python -m pytest -m frameworks; builds go to the user's envrunner cache (or
    $ENVRUNNER_FRAMEWORKS_HOME) so that later runs reuse them."""
    import platformdirs

    home = os.environ.get("ENVRUNNER_FRAMEWORKS_HOME") or platformdirs.user_cache_dir("envrunner")
    out = run_example("mixed_frameworks.py", dict(os.environ, ENVRUNNER_HOME=home))
    assert "torch 2.13" in out and "tensorflow 2.21" in out
    assert "numpy 1." in out  # TensorFlow's side runs numpy 1, torch's numpy 2
    accuracy = float(out.split("accuracy ")[1].split("%")[0])
    assert accuracy > 90
