"""The joblib backend: ``joblib.parallel_config(backend="envrunner", env=...)`` runs a loop's
calls in an environment's workers, on the caller's Python and on another."""

from __future__ import annotations

import subprocess
import sys

import joblib
import pytest
import tasks

import envrunner


@pytest.fixture(autouse=True)
def registered() -> None:
    envrunner.register_joblib()


def test_a_parallel_loop_runs_in_the_environment(runner: envrunner.Runner, env: str) -> None:
    with joblib.parallel_config(backend="envrunner", env=env):
        results = joblib.Parallel(n_jobs=-1)(joblib.delayed(tasks.add)(x, b=1) for x in range(40))
        pids = joblib.Parallel(n_jobs=2)(joblib.delayed(tasks.note)(p) for p in ["/dev/null"] * 4)
    assert results == list(range(1, 41))
    assert set(pids) <= set(runner.worker_pids(env))


def test_an_error_in_the_loop_is_raised(runner: envrunner.Runner, env: str) -> None:
    with joblib.parallel_config(backend="envrunner", env=env), pytest.raises(tasks.TaskError):
        joblib.Parallel(n_jobs=-1)(joblib.delayed(tasks.square_or_fail)(x, 3) for x in range(10))


def test_a_wrong_environment_is_named(runner: envrunner.Runner) -> None:
    with (
        joblib.parallel_config(backend="envrunner", env="nope"),
        pytest.raises(envrunner.UnknownEnvironmentError, match="nope"),
    ):
        joblib.Parallel(n_jobs=-1)(joblib.delayed(tasks.square)(x) for x in range(3))


def test_import_envrunner_registers_the_backend_when_joblib_is_loaded() -> None:
    code = (
        "import joblib, envrunner; from joblib.parallel import BACKENDS; "
        "assert 'envrunner' in BACKENDS, sorted(BACKENDS)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import envrunner, sys; assert 'joblib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
