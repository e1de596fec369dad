"""One prepare: build (or find) an environment and say how to start its workers.

::

    EnvSpec ─► resolve (interpreter, content key) ─► build, or an overlay for an interpreter
    used as it is ─► the runtime copy compiled for that interpreter ─► Prepared

Used by the runner (for its pools, in a thread per pool) and by ``envrunner worker`` (for a
worker on another machine), so both start workers the same way. :class:`Environments` is a
runner's side of it: each interpreter resolved once, the runtime copy made once, progress shown
as the runner was asked to.

May import: the standard library, ``envrunner._calls``, ``_environments``, ``_manifest``,
``_process``, ``_progress``, ``_runtime.errors``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ._calls import Prepared
from ._runtime.errors import EnvrunnerError, RunnerClosedError

if TYPE_CHECKING:
    from ._environments import Resolved
    from ._manifest import EnvSpec, Manifest
    from ._progress import Progress

__all__ = ["Environments", "build_spec", "prepare"]


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


class Environments:
    """A runner's environments made ready to start workers.

    Args:
        manifest: The runner's manifest.
        progress: How builds show progress (see ``Runner``).
    """

    def __init__(self, manifest: Manifest, progress: bool | Progress | None) -> None:
        self.manifest = manifest
        self._progress = progress
        #: Set at shutdown: builds in progress stop.
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._resolved: dict[str, Resolved] = {}
        self._runtime: Path | None = None

    def resolve(self, spec: EnvSpec) -> Resolved:
        """``spec``'s interpreter and content key, found once."""
        resolved = self._resolved.get(spec.name)
        if resolved is None:
            from ._environments import resolve

            with self._lock:
                resolved = self._resolved.get(spec.name)
                if resolved is None:
                    resolved = resolve(spec)
                    self._resolved[spec.name] = resolved
        return resolved

    def progress(self) -> Progress:
        from ._progress import auto_progress

        setting = self._progress
        if setting is None or isinstance(setting, bool):
            return auto_progress(setting)
        return setting

    def runtime_root(self) -> Path:
        """The sealed runtime copy workers start from (made once)."""
        if self._runtime is None:
            from ._process import runtime_root

            self._runtime = runtime_root()
        return self._runtime

    def prepare(self, env: str, cancel: threading.Event) -> Prepared:
        """Build (or find) ``env`` and say how to start its workers; runs in its own thread."""
        spec = self.manifest[env]
        return prepare(
            spec,
            self.resolve(spec),
            self.runtime_root(),
            self.progress(),
            cancel,
            self.manifest.path,
        )

    def build(self, names: list[str], closed: Callable[[], bool]) -> None:
        """Build the environments named, each attempted; the first failure raised at the end."""
        specs = [self.manifest[name] for name in names]  # an unknown name fails first
        failure: BaseException | None = None
        for spec in specs:
            if closed():
                raise RunnerClosedError("the runner was shut down")
            try:
                build_spec(self.resolve(spec), self.progress(), self.cancel, self.manifest.path)
            except EnvrunnerError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
