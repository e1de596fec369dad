"""One prepare: build (or find) an environment and say how to start its workers.

::

    EnvSpec ─► resolve (interpreter, content key) ─► build, or an overlay for an interpreter
    used as it is ─► the runtime copy compiled for that interpreter ─► Prepared

Used by the runner (for its pools, in a thread per pool) and by ``envrunner worker`` (for a
worker on another machine), so both start workers the same way.

May import: the standard library, ``envrunner._calls``, ``_environments``, ``_manifest``,
``_process``, ``_progress``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ._calls import Prepared

if TYPE_CHECKING:
    from ._environments import Resolved
    from ._manifest import EnvSpec
    from ._progress import Progress

__all__ = ["build_spec", "prepare"]


def build_spec(
    resolved: Resolved,
    progress: Progress,
    cancel: threading.Event | None = None,
    manifest_path: Path | None = None,
) -> tuple[str, ...]:
    """Build ``resolved`` (or find it built); returns the folders its workers append to their
    import path (the runtime overlay of an interpreter used as it is)."""
    from ._environments import build, overlay

    if resolved.key is None:
        return (str(overlay(resolved.interpreter, progress)),)
    build(resolved, progress=progress, cancel=cancel, manifest_path=manifest_path)
    return ()


def prepare(
    spec: EnvSpec,
    resolved: Resolved,
    runtime: Path,
    progress: Progress,
    cancel: threading.Event | None = None,
    manifest_path: Path | None = None,
) -> Prepared:
    """Build (or find) ``spec``'s environment and say how to start its workers.

    Raises:
        BuildError, InterpreterNotFoundError: As the build does.
    """
    from ._process import compile_runtime

    append = build_spec(resolved, progress, cancel, manifest_path)
    interpreter = resolved.interpreter
    if resolved.key is None:
        virtual_env = Path(interpreter.prefix) if interpreter.is_venv else None
    else:
        virtual_env = resolved.path
    compile_runtime(runtime, resolved.python, interpreter.cache_tag)
    return Prepared(
        name=spec.name,
        python=resolved.python,
        version=interpreter.version,
        bin_dir=resolved.bin_dir,
        virtual_env=virtual_env,
        append_paths=append,
        environ=dict(spec.env),
    )
