"""``envrunner`` as a worker sees it: the package face copied into the worker's import path.

User modules that define tasks (``@envrunner.task(env="torch")``) are imported inside workers
when their functions travel by reference, so ``import envrunner`` must work there, without the
caller-side modules (and their dependencies) that the environment does not have. This file becomes
``envrunner/__init__.py`` of the sealed runtime copy; the caller never imports it.

Inside a worker, a task of the worker's own environment is the plain function: calling it runs it
right there. A task of another environment raises a clear error when called: calls from one
worker into another environment are not supported.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

from envrunner import _runtime
from envrunner._runtime import __version__, current_environment
from envrunner._runtime.errors import (
    BuildError,
    DecodeError,
    DependencyError,
    EncodeError,
    EnvrunnerError,
    InterpreterNotFoundError,
    ManifestError,
    ManifestNotFoundError,
    ProtocolError,
    ReferenceLostError,
    RemoteError,
    RunnerClosedError,
    SerializationError,
    TaskTimeoutError,
    UnknownEnvironmentError,
    WorkerCrashed,
    WorkerStartError,
)

__all__ = [
    "BuildError",
    "DecodeError",
    "DependencyError",
    "EncodeError",
    "EnvrunnerError",
    "InterpreterNotFoundError",
    "ManifestError",
    "ManifestNotFoundError",
    "ProtocolError",
    "ReferenceLostError",
    "RemoteError",
    "RunnerClosedError",
    "SerializationError",
    "TaskTimeoutError",
    "UnknownEnvironmentError",
    "WorkerCrashed",
    "WorkerStartError",
    "__version__",
    "call",
    "current_environment",
    "task",
]


def task(fn: Optional[Callable[..., Any]] = None, *, env: Optional[str] = None, **options: Any):  # type: ignore[no-untyped-def]
    """Inside a worker: the function itself for this environment, a guard for any other."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        if env is None or env == _runtime.WORKER_ENV:
            return function

        @functools.wraps(function)
        def guard(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(
                f"{function.__qualname__} is a task of environment {env!r}, called inside a "
                f"worker of {_runtime.WORKER_ENV!r}: a worker cannot call into another "
                "environment. Return what it needs to the caller and call the task from there."
            )

        guard.__envrunner_fn__ = function  # type: ignore[attr-defined]
        return guard

    return decorate(fn) if fn is not None else decorate


def call(env: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Inside a worker: run ``fn`` here if ``env`` is this worker's environment."""
    if env != _runtime.WORKER_ENV:
        raise RuntimeError(
            f"envrunner.call({env!r}, ...) inside a worker of {_runtime.WORKER_ENV!r}: a worker "
            "cannot call into another environment"
        )
    return getattr(fn, "__envrunner_fn__", fn)(*args, **kwargs)
