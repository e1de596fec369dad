"""envrunner: call functions that run in other Python environments.

Environments are declared in a YAML manifest (``environments.yaml``); each task is pinned to one
and runs in a long-lived worker interpreter of it, built and started on first use::

    import envrunner

    @envrunner.task(env="torch")
    def train(x): ...

    weights = train(data)

Importing envrunner is cheap: the broker, zmq and yaml load on first use.
"""

from __future__ import annotations

import sys as _sys
from typing import TYPE_CHECKING, Any

from ._runtime import __version__
from ._runtime.errors import (
    BuildError,
    DecodeError,
    DependencyError,
    EncodeError,
    EnvrunnerError,
    InterpreterNotFoundError,
    ManifestError,
    ManifestNotFoundError,
    Problem,
    ProtocolError,
    ReferenceLostError,
    RemoteError,
    RemoteTraceback,
    RunnerClosedError,
    SerializationError,
    TaskTimeoutError,
    UnknownEnvironmentError,
    WorkerCrashed,
    WorkerStartError,
)

if TYPE_CHECKING:
    from ._executor import EnvExecutor
    from ._futures import CallFuture, Ref
    from ._manifest import EnvSpec, Manifest, find_manifest, load_manifest
    from ._runner import Runner, current_runner
    from ._runtime import current_environment
    from ._tasks import Task, call, executor, live, task

__all__ = [
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

_LAZY = {
    "CallFuture": "_futures",
    "Ref": "_futures",
    "Runner": "_runner",
    "Task": "_tasks",
    "call": "_tasks",
    "executor": "_tasks",
    "live": "_tasks",
    "EnvExecutor": "_executor",
    "current_environment": "_runtime",
    "current_runner": "_runner",
    "task": "_tasks",
    "EnvSpec": "_manifest",
    "Manifest": "_manifest",
    "find_manifest": "_manifest",
    "load_manifest": "_manifest",
}


def register_joblib() -> None:
    """Make ``joblib.parallel_config(backend="envrunner", env=...)`` available.

    ``import envrunner`` does this by itself when joblib is already imported; call it when
    joblib is imported after envrunner. joblib is not a dependency of envrunner.
    """
    from ._joblib import register

    register()


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'envrunner' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if "joblib" in _sys.modules:  # joblib is loaded already: its backend costs nothing
    register_joblib()
