"""The package as users and workers meet it: its public names, its import cost, its seal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import envrunner

ROOT = Path(__file__).resolve().parent.parent


def test_the_public_names_are_pinned() -> None:
    assert envrunner.__all__ == [
        "BuildError",
        "CallFuture",
        "DecodeError",
        "DependencyError",
        "EncodeError",
        "EnvExecutor",
        "EnvSpec",
        "EnvrunnerError",
        "InterpreterNotFoundError",
        "Manifest",
        "ManifestError",
        "ManifestNotFoundError",
        "Problem",
        "ProtocolError",
        "Ref",
        "ReferenceLostError",
        "RemoteError",
        "RemoteTraceback",
        "Runner",
        "RunnerClosedError",
        "SerializationError",
        "Task",
        "TaskTimeoutError",
        "UnknownEnvironmentError",
        "WorkerCrashed",
        "WorkerStartError",
        "__version__",
        "call",
        "current_environment",
        "current_runner",
        "executor",
        "find_manifest",
        "live",
        "load_manifest",
        "register_joblib",
        "task",
    ]
    assert envrunner.__all__ == sorted(envrunner.__all__)
    for name in envrunner.__all__:
        assert getattr(envrunner, name) is not None


def test_every_error_is_an_envrunner_error_and_says_what_to_do() -> None:
    errors = [getattr(envrunner, n) for n in envrunner.__all__ if n.endswith("Error")]
    assert all(issubclass(e, envrunner.EnvrunnerError) for e in errors)
    assert issubclass(envrunner.WorkerCrashed, envrunner.EnvrunnerError)
    assert issubclass(envrunner.TaskTimeoutError, TimeoutError)
    crashed = envrunner.WorkerCrashed(
        "torch", 4242, -11, ["Fatal Python error: Segmentation fault"]
    )
    assert "signal SIGSEGV (-11): a native crash" in str(crashed)
    assert crashed.signal == "SIGSEGV"
    assert "| Fatal Python error" in str(crashed)
    killed = envrunner.WorkerCrashed("torch", 4242, -9)
    assert "out of memory" in str(killed)


def test_importing_envrunner_loads_no_heavy_module() -> None:
    code = (
        "import sys, envrunner\n"
        "envrunner.task\n"
        "heavy = [m for m in ('zmq', 'yaml', 'virtualenv', 'msgpack', 'cloudpickle', 'filelock')"
        " if m in sys.modules]\n"
        "print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_worker_runtime_parses_on_the_oldest_python() -> None:
    python39 = sorted((Path.home() / ".pyenv" / "versions").glob("3.9.*/bin/python3.9"))
    if not python39:
        pytest.skip("no Python 3.9 here")
    files = [
        *sorted((ROOT / "envrunner" / "_runtime").glob("*.py")),
        ROOT / "envrunner" / "worker.py",
    ]
    code = "import ast, sys\nfor f in sys.argv[1:]:\n    ast.parse(open(f).read(), f)\n"
    subprocess.run([str(python39[-1]), "-c", code, *map(str, files)], check=True)


def test_the_sealed_runtime_imports_only_what_a_worker_has(manifest_path: Path) -> None:
    """In a fresh worker, only the standard library and the three runtime packages are loaded."""
    import tasks

    with envrunner.Runner(manifest_path, progress=False) as fresh:
        modules = fresh.call("other", tasks.loaded_top_level_modules)
    foreign = {"yaml", "virtualenv", "filelock", "platformdirs", "numpy", "six"} & set(modules)
    assert not foreign
    assert {"zmq", "msgpack", "envrunner"} <= set(modules)
