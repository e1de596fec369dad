"""Every Python interpreter on this machine, found where installers put them (layer 2).

May import: the standard library and ``envrunner._interpreter_probe``,
``envrunner._runtime.errors``.

Where interpreters are looked for, in this order (the first place that finds an interpreter
names its source)::

    $ENVRUNNER_PYTHONS      folders (bin folders, installs, folders of installs) or executables
    pyenv                   $PYENV_ROOT/versions/*/bin (default ~/.pyenv)
    uv                      uv-managed installs: $UV_PYTHON_INSTALL_DIR, else
                            $XDG_DATA_HOME/uv/python (default ~/.local/share/uv/python)
    PATH                    python3.N, python3, python in each folder (pyenv's shims skipped)
    current                 the interpreter running envrunner (its base, outside a virtualenv)

Each candidate is probed (``_interpreter_probe``: run once, then cached); the whole answer is
kept in memory for 30 s per set of search variables. Nothing is ever downloaded. Candidates
whose answer is cached on disk are read in this thread; only the others are run, in parallel.

``discover(minor=(3, 11))`` leaves out the candidates whose name says another version
(``python3.12``), unrun: what a manifest's ``python: "3.11"`` needs, at a fraction of the cost of
probing every Python on a machine the first time (#14).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ._interpreter_probe import (
    MIN_VERSION,
    Interpreter,
    InterpreterCache,
    NotCachedError,
    absolute_path,
    is_pyenv_shim,
    probe,
    pyenv_root,
)
from ._runtime.errors import InterpreterNotFoundError

_VERSIONED_NAME = re.compile(r"python3\.\d+")


def discover(minor: tuple[int, int] | None = None) -> list[Interpreter]:
    """Every usable interpreter on this machine (3.9 and newer), newest first.

    Candidates that fail to run (such as pyenv shims of inactive versions) are skipped. Two
    paths to the same file with the same ``sys.prefix`` count once, under the first place
    that found it.

    Args:
        minor: Only what may be this version: candidates named ``python3.N`` for another N
            are left out without being run (``python3``, ``python`` are probed). Every
            interpreter of that version is in the answer, as in the full one.

    Returns:
        The interpreters, newest version first; equal versions keep the search order.
    """
    if minor is not None:
        where = tuple(os.environ.get(name, "") for name in _DISCOVERY_VARIABLES)
        now = time.monotonic()
        partial = (*where, f"{minor[0]}.{minor[1]}")
        for key in (where, partial):  # the full answer if fresh, else this version's
            memo = _discovered.get(key)
            if memo is not None and now - memo[0] < _DISCOVERY_MEMO_SECONDS:
                return [i for i in memo[1] if i.version[:2] >= MIN_VERSION]
        found = _discover(minor)
        _discovered[partial] = (now, tuple(found))
        return [i for i in found if i.version[:2] >= MIN_VERSION]
    return [found for found in discover_all() if found.version[:2] >= MIN_VERSION]


def discover_all() -> list[Interpreter]:
    """:func:`discover`, with the interpreters too old for workers kept (for messages)."""
    # Within one process a fresh answer is reused for a while: every new Runner resolves its
    # environments, and running each candidate again (even cached) costs about 10 ms.
    where = tuple(os.environ.get(name, "") for name in _DISCOVERY_VARIABLES)
    memo = _discovered.get(where)
    if memo is not None and time.monotonic() - memo[0] < _DISCOVERY_MEMO_SECONDS:
        return list(memo[1])
    found = _discover()
    _discovered[where] = (time.monotonic(), tuple(found))
    return found


_DISCOVERY_VARIABLES = (
    "PATH",
    "ENVRUNNER_PYTHONS",
    "ENVRUNNER_HOME",
    "PYENV_ROOT",
    "UV_PYTHON_INSTALL_DIR",
    "XDG_DATA_HOME",
    "HOME",
)
_DISCOVERY_MEMO_SECONDS = 30.0
_discovered: dict[tuple[str, ...], tuple[float, tuple[Interpreter, ...]]] = {}


def _discover(minor: tuple[int, int] | None = None) -> list[Interpreter]:
    candidates = [c for c in _candidates() if minor is None or _may_be(c[0], minor)]
    cache = InterpreterCache()

    def try_one(candidate: tuple[Path, str]) -> Interpreter | None:
        try:
            return probe(candidate[0], candidate[1], cache)
        except InterpreterNotFoundError:
            return None

    results: list[Interpreter | None] = []
    to_run: list[int] = []
    for index, (path, source) in enumerate(candidates):  # the cache first, in this thread
        try:
            results.append(probe(path, source, cache, run=False))
        except InterpreterNotFoundError:
            results.append(None)
        except NotCachedError:  # not cached: run it below
            results.append(None)
            to_run.append(index)
    if len(to_run) > 1:
        from concurrent.futures import ThreadPoolExecutor  # not needed when nothing is probed

        with ThreadPoolExecutor(max_workers=min(8, len(to_run))) as pool:
            ran = list(pool.map(try_one, [candidates[index] for index in to_run]))
        for index, interpreter in zip(to_run, ran):  # noqa: B905 - same length
            results[index] = interpreter
    elif to_run:
        results[to_run[0]] = try_one(candidates[to_run[0]])
    cache.save()
    found: list[Interpreter] = []
    seen: set[tuple[str, str]] = set()
    for interpreter in results:
        if interpreter is None:
            continue
        identity = (os.path.realpath(interpreter.path), interpreter.prefix)
        if identity not in seen:
            seen.add(identity)
            found.append(interpreter)
    found.sort(key=lambda interpreter: interpreter.version, reverse=True)
    return found


def _may_be(path: Path, minor: tuple[int, int]) -> bool:
    """Whether ``path`` may be a Python ``minor``: False for ``python3.N`` of another N."""
    if not _VERSIONED_NAME.fullmatch(path.name):
        return True
    return int(path.name.rsplit(".", 1)[1]) == minor[1] and minor[0] == 3


def _candidates() -> Iterator[tuple[Path, str]]:
    """Executables that may be interpreters, with their source, each path once."""
    seen: set[Path] = set()
    for path, source in _all_candidates():
        path = absolute_path(path)  # noqa: PLW2901 - one name for one candidate
        if path not in seen and path.is_file() and os.access(path, os.X_OK):
            seen.add(path)
            yield path, source


def _all_candidates() -> Iterator[tuple[Path, str]]:
    for entry in os.environ.get("ENVRUNNER_PYTHONS", "").split(os.pathsep):
        if not entry.strip():
            continue
        place = Path(entry.strip()).expanduser()
        if not place.is_dir():
            yield place, "ENVRUNNER_PYTHONS"
        elif _pythons_in(place):
            yield from ((path, "ENVRUNNER_PYTHONS") for path in _pythons_in(place))
        elif (place / "bin").is_dir():
            yield from ((path, "ENVRUNNER_PYTHONS") for path in _install_python(place))
        else:
            for install in _subfolders(place):
                yield from ((path, "ENVRUNNER_PYTHONS") for path in _install_python(install))
    for install in _subfolders(pyenv_root() / "versions"):
        yield from ((path, "pyenv") for path in _install_python(install))
    for install in _subfolders(_uv_root()):
        yield from ((path, "uv") for path in _install_python(install))
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        folder = Path(entry)
        if entry and folder.is_absolute() and not is_pyenv_shim(folder):
            yield from ((path, "PATH") for path in _pythons_in(folder))
    current = getattr(sys, "_base_executable", "") or sys.executable
    if current:
        yield Path(current), "current"


def _pythons_in(folder: Path) -> list[Path]:
    """``python3.N`` (newest first), ``python3`` and ``python`` in a bin folder."""
    try:
        names = {entry.name for entry in folder.iterdir()}
    except OSError:
        return []
    versioned = sorted(
        (name for name in names if _VERSIONED_NAME.fullmatch(name)),
        key=lambda name: int(name.rsplit(".", 1)[1]),
        reverse=True,
    )
    plain = [name for name in ("python3", "python") if name in names]
    return [folder / name for name in versioned + plain]


def _install_python(install: Path) -> list[Path]:
    """The one interpreter of an installation: ``bin/python3.N``, else ``bin/python3``."""
    return [path for path in _pythons_in(install / "bin") if path.name != "python"][:1]


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(path for path in folder.iterdir() if path.is_dir())
    except OSError:
        return []


def _uv_root() -> Path:
    configured = os.environ.get("UV_PYTHON_INSTALL_DIR")
    if configured:
        return Path(configured).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(data).expanduser() / "uv" / "python"
