"""Find a Python interpreter by version or path (DESIGN.md layer 2).

May import: the standard library, ``envrunner._home``, ``envrunner._runtime.errors``.

Where interpreters are looked for, in this order (the first place that finds an interpreter
names its source)::

    $ENVRUNNER_PYTHONS      folders (bin folders, installs, folders of installs) or executables
    pyenv                   $PYENV_ROOT/versions/*/bin (default ~/.pyenv)
    uv                      uv-managed installs: $UV_PYTHON_INSTALL_DIR, else
                            $XDG_DATA_HOME/uv/python (default ~/.local/share/uv/python)
    PATH                    python3.N, python3, python in each folder (pyenv's shims skipped)
    current                 the interpreter running envrunner (its base, outside a virtualenv)

Each candidate is run once with ``-I`` to say what it is; the answer is cached in
``home()/interpreters.json`` by file identity (path, and the resolved file's mtime and size),
so a later lookup costs a ``stat`` and no subprocess. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._home import home
from ._runtime.errors import InterpreterNotFoundError

__all__ = [
    "MIN_VERSION",
    "Interpreter",
    "discover",
    "find_interpreter",
    "inspect_interpreter",
]

#: Workers need Python 3.9 or newer (and virtualenv no longer seeds 3.8).
MIN_VERSION = (3, 9)

_TIMEOUT = 10.0
_MARKER = "envrunner-interpreter:"
_CACHE_FORMAT = 1
_CACHE_NAME = "interpreters.json"
# Runs on any Python that has -I (3.4+): what the interpreter says about itself, on one line.
_SCRIPT = f"""\
import json, sys, sysconfig
impl = sys.implementation
print({_MARKER!r} + json.dumps({{
    "version": list(sys.version_info[:3]),
    "full_version": sys.version,
    "implementation": impl.name,
    "platform": sysconfig.get_platform(),
    "cache_tag": impl.cache_tag or "",
    "prefix": sys.prefix,
    "base_prefix": getattr(sys, "base_prefix", sys.prefix),
}}))
"""
_VERSION_REQUEST = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_VERSIONED_NAME = re.compile(r"python3\.\d+")
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Interpreter:
    """A Python interpreter and what it said about itself.

    Attributes:
        path: The executable to run (absolute; symlinks kept as found).
        version: ``sys.version_info[:3]``.
        full_version: ``sys.version`` (part of build keys).
        implementation: ``sys.implementation.name``, such as ``"cpython"``.
        platform: ``sysconfig.get_platform()``, such as ``"linux-x86_64"``.
        cache_tag: ``sys.implementation.cache_tag``, such as ``"cpython-312"``.
        prefix: ``sys.prefix``.
        base_prefix: ``sys.base_prefix``.
        source: Where it was found: ``"explicit"``, ``"ENVRUNNER_PYTHONS"``, ``"pyenv"``,
            ``"uv"``, ``"PATH"`` or ``"current"``.
    """

    path: Path
    version: tuple[int, int, int]
    full_version: str
    implementation: str
    platform: str
    cache_tag: str
    prefix: str
    base_prefix: str
    source: str

    @property
    def is_venv(self) -> bool:
        """True for an interpreter of a virtual environment."""
        return self.prefix != self.base_prefix

    @property
    def minor(self) -> str:
        """The minor version, such as ``"3.12"``."""
        return f"{self.version[0]}.{self.version[1]}"

    def describe(self) -> str:
        """One line for messages: ``"3.12.1 at /root/.pyenv/versions/.../python3.12 (pyenv)"``."""
        name = "" if self.implementation == "cpython" else f"{self.implementation} "
        notes = self.source + (", virtualenv" if self.is_venv else "")
        return f"{name}{'.'.join(map(str, self.version))} at {self.path} ({notes})"


# --------------------------------------------------------------------------- inspecting


def inspect_interpreter(path: str | os.PathLike[str], source: str = "explicit") -> Interpreter:
    """Ask an interpreter what it is, or answer from the cache when the file is unchanged.

    Args:
        path: The executable (made absolute; symlinks are kept).
        source: Where it was found, recorded on the result.

    Returns:
        The interpreter.

    Raises:
        InterpreterNotFoundError: The path is not there, is not executable, or does not run
            as a Python interpreter; ``detail`` says which.
    """
    cache = _Cache()
    interpreter = _inspect(_absolute(path), source, cache)
    cache.save()
    return interpreter


def _inspect(path: Path, source: str, cache: _Cache) -> Interpreter:
    request = str(path)
    if not path.exists():
        what = "a broken symlink" if path.is_symlink() else "not there"
        raise InterpreterNotFoundError(request, detail=f"{path} is {what}")
    if path.is_dir():
        raise InterpreterNotFoundError(request, detail=f"{path} is a folder, not an interpreter")
    if not os.access(path, os.X_OK):
        raise InterpreterNotFoundError(request, detail=f"{path} is not executable")
    stat = path.stat()
    identity = (stat.st_mtime_ns, stat.st_size)
    info = cache.get(request, identity)
    interpreter = None if info is None else _from_info(path, info, source)
    if interpreter is None and info is not None and isinstance(info.get("error"), str):
        raise InterpreterNotFoundError(request, detail=info["error"])
    if interpreter is None:
        try:
            info = _run(path)
        except _RunError as exc:
            if exc.lasting:
                cache.put(request, identity, {"error": exc.detail})
            raise InterpreterNotFoundError(request, detail=exc.detail)
        cache.put(request, identity, info)
        interpreter = _from_info(path, info, source)
    if interpreter is None:
        detail = f"{path} did not describe itself as a Python interpreter does"
        raise InterpreterNotFoundError(request, detail=detail)
    return interpreter


class _RunError(Exception):
    """Running a candidate failed; ``lasting`` when running it again would fail the same way."""

    def __init__(self, detail: str, lasting: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.lasting = lasting


def _run(path: Path) -> dict[str, Any]:
    request = str(path)
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    try:
        done = subprocess.run(
            [request, "-I", "-c", _SCRIPT],
            env=environ,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _RunError(f"{path} did not answer within {_TIMEOUT:g} s", lasting=False)
    except OSError as exc:
        raise _RunError(f"{path} cannot be run: {exc.strerror}", lasting=False)
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        said = " | ".join(lines[:2])
        detail = f"running {path} failed with exit code {done.returncode}"
        if said:
            detail += f": {said}"
        shim = _is_pyenv_shim(path.parent)
        if shim:
            detail += (
                "; it is a pyenv shim, which runs only the versions pyenv has active here: "
                f"use {_pyenv_root() / 'versions'}/<version>/bin/{path.name} instead, "
                'or ask for a version such as "3.12"'
            )
        # A shim's answer changes with pyenv's settings, not with the file: never cache it.
        raise _RunError(detail, lasting=not shim)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_MARKER):
            try:
                info = json.loads(line[len(_MARKER) :])
            except ValueError:
                break
            if isinstance(info, dict):
                return info
    raise _RunError(f"{path} ran but did not answer as a Python interpreter does", lasting=True)


def _from_info(path: Path, info: dict[str, Any], source: str) -> Interpreter | None:
    try:
        major, minor, micro = (int(part) for part in info["version"])
        fields = {
            name: info[name]
            for name in (
                "full_version",
                "implementation",
                "platform",
                "cache_tag",
                "prefix",
                "base_prefix",
            )
        }
    except (KeyError, TypeError, ValueError):
        return None
    if not all(isinstance(value, str) for value in fields.values()):
        return None
    return Interpreter(
        path=path,
        version=(major, minor, micro),
        full_version=fields["full_version"],
        implementation=fields["implementation"],
        platform=fields["platform"],
        cache_tag=fields["cache_tag"],
        prefix=fields["prefix"],
        base_prefix=fields["base_prefix"],
        source=source,
    )


class _Cache:
    """``home()/interpreters.json``: what each interpreter said, by path and file identity.

    Read once when made; :meth:`save` merges what was learned into the file as it is then
    and replaces it atomically. A file that cannot be read or parsed counts as empty.
    """

    def __init__(self) -> None:
        self.file = home() / _CACHE_NAME
        self.entries = self._read()
        self.learned: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
            return {}
        entries = data.get("interpreters")
        return entries if isinstance(entries, dict) else {}

    def get(self, path: str, identity: tuple[int, int]) -> dict[str, Any] | None:
        entry = self.learned.get(path) or self.entries.get(path)
        if not isinstance(entry, dict):
            return None
        if (entry.get("mtime_ns"), entry.get("size")) != identity:
            return None
        info = entry.get("info")
        return info if isinstance(info, dict) else None

    def put(self, path: str, identity: tuple[int, int], info: dict[str, Any]) -> None:
        with self._lock:
            self.learned[path] = {"mtime_ns": identity[0], "size": identity[1], "info": info}

    def save(self) -> None:
        if not self.learned:
            return
        with _CACHE_LOCK:
            entries = self._read()
            entries.update(self.learned)
            text = json.dumps(
                {"format": _CACHE_FORMAT, "interpreters": entries}, indent=1, sort_keys=True
            )
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                fd, temporary = tempfile.mkstemp(
                    dir=self.file.parent, prefix=f".{_CACHE_NAME}.", suffix=".tmp"
                )
            except OSError:
                return  # the cache is an optimisation: an unwritable home only costs time
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as stream:
                    stream.write(text)
                Path(temporary).replace(self.file)
            except OSError:
                Path(temporary).unlink(missing_ok=True)
                return
            self.entries = entries
            self.learned = {}


# --------------------------------------------------------------------------- discovery


def discover() -> list[Interpreter]:
    """Every usable interpreter on this machine (3.9 and newer), newest first.

    Candidates that fail to run (such as pyenv shims of inactive versions) are skipped. Two
    paths to the same file with the same ``sys.prefix`` count once, under the first place
    that found it.

    Returns:
        The interpreters, newest version first; equal versions keep the search order.
    """
    return [found for found in _discover_all() if found.version[:2] >= MIN_VERSION]


def _discover_all() -> list[Interpreter]:
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


def _discover() -> list[Interpreter]:
    candidates = list(_candidates())
    cache = _Cache()

    def probe(candidate: tuple[Path, str]) -> Interpreter | None:
        try:
            return _inspect(candidate[0], candidate[1], cache)
        except InterpreterNotFoundError:
            return None

    if len(candidates) > 1:
        from concurrent.futures import ThreadPoolExecutor  # not needed when nothing is probed

        with ThreadPoolExecutor(max_workers=min(8, len(candidates))) as pool:
            results = list(pool.map(probe, candidates))
    else:
        results = [probe(candidate) for candidate in candidates]
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


def _candidates() -> Iterator[tuple[Path, str]]:
    """Executables that may be interpreters, with their source, each path once."""
    seen: set[Path] = set()
    for path, source in _all_candidates():
        path = _absolute(path)  # noqa: PLW2901 - one name for one candidate
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
    for install in _subfolders(_pyenv_root() / "versions"):
        yield from ((path, "pyenv") for path in _install_python(install))
    for install in _subfolders(_uv_root()):
        yield from ((path, "uv") for path in _install_python(install))
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        folder = Path(entry)
        if entry and folder.is_absolute() and not _is_pyenv_shim(folder):
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


def _pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or "~/.pyenv").expanduser()


def _uv_root() -> Path:
    configured = os.environ.get("UV_PYTHON_INSTALL_DIR")
    if configured:
        return Path(configured).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(data).expanduser() / "uv" / "python"


def _is_pyenv_shim(folder: Path) -> bool:
    """True for a pyenv shims folder: it runs only the versions pyenv has active."""
    if folder.name != "shims":
        return False
    parent = folder.parent
    return (
        parent == _pyenv_root()
        or (parent / "versions").is_dir()
        or (parent / "libexec" / "pyenv").exists()
        or parent.name.startswith("pyenv")
    )


def _absolute(path: str | os.PathLike[str]) -> Path:
    """Absolute, with ``~`` expanded, symlinks kept."""
    return Path(path).expanduser().absolute()


# --------------------------------------------------------------------------- choosing


def find_interpreter(request: str, *, env: str = "", where: str = "") -> Interpreter:
    """The interpreter a manifest's ``python:`` asks for.

    Args:
        request: A version (``"3"``, ``"3.12"``, ``"3.12.1"``), or a path (it contains ``/``
            or starts with ``~`` or ``.``) to an executable or a virtualenv folder.
        env: The environment that asks, for the error message.
        where: ``file:line`` of the ``python:`` key, for the error message.

    Returns:
        For a path, that interpreter. For a version, the newest matching CPython release,
        preferring interpreters outside virtual environments.

    Raises:
        InterpreterNotFoundError: Nothing matches; the message lists every interpreter found.
    """
    request = request.strip()
    asked = f"python: {request!r} at {where}" if where else ""
    if "/" in request or request.startswith(("~", ".")):
        return _find_path(request, env, asked)
    match = _VERSION_REQUEST.fullmatch(request)
    found = discover()
    if match is None:
        detail = 'expected a version such as "3.12" or a path to an interpreter'
        raise _not_found(request, found, env, detail, asked)
    wanted = tuple(int(part) for part in match.groups() if part is not None)
    if wanted[0] < MIN_VERSION[0] or (len(wanted) > 1 and wanted[:2] < MIN_VERSION):
        raise _too_old(request, wanted, found, env, asked)
    matching = [
        interpreter
        for interpreter in found
        if interpreter.implementation == "cpython" and interpreter.version[: len(wanted)] == wanted
    ]
    if not matching:
        detail = f"no CPython {request} was found"
        raise _not_found(request, found, env, detail, asked)
    # Newest first, outside a virtualenv first; on a tie the place searched first wins.
    ranked = sorted(
        enumerate(matching), key=lambda item: (not item[1].is_venv, item[1].version, -item[0])
    )
    return ranked[-1][1]


def _find_path(request: str, env: str, asked: str) -> Interpreter:
    path = _absolute(request)
    if path.is_dir():
        inside = [path / "bin" / name for name in ("python", "python3")]
        executable = next((candidate for candidate in inside if candidate.exists()), None)
        if executable is None:
            detail = f"{path} is a folder without bin/python: not a virtualenv or Python install"
            raise _not_found(request, discover(), env, detail, asked)
        path = executable
    try:
        interpreter = inspect_interpreter(path)
    except InterpreterNotFoundError as exc:
        raise _not_found(request, discover(), env, exc.detail, asked)
    if interpreter.version[:2] < MIN_VERSION:
        detail = (
            f"{path} is Python {'.'.join(map(str, interpreter.version))}; "
            "workers need Python 3.9 or newer"
        )
        error = _not_found(request, discover(), env, detail, asked)
        advice = "Point python: at a Python 3.9 or newer, or ask for a version from the list above."
        raise InterpreterNotFoundError(
            error.request, error.found, env=env, detail=error.detail, advice=advice
        )
    return interpreter


def _too_old(
    request: str, wanted: tuple[int, ...], found: list[Interpreter], env: str, asked: str
) -> InterpreterNotFoundError:
    """A version below 3.9 was asked for: say which of those are installed, and what to ask
    for instead (installing it would not help)."""
    installed = [
        interpreter
        for interpreter in _discover_all()
        if interpreter.version[:2] < MIN_VERSION and interpreter.version[: len(wanted)] == wanted
    ]
    newest = found[0].version[:2] if found else None
    if installed:
        versions = ", ".join(".".join(map(str, i.version)) for i in installed)
        detail = f"Python {versions} is installed, but workers need Python 3.9 or newer"
    else:
        detail = "workers need Python 3.9 or newer"
    detail += " (virtualenv no longer seeds 3.8 or older)"
    advice = "Ask for Python 3.9 or newer in python:"
    if newest is not None:
        advice += f', such as "{newest[0]}.{newest[1]}" from the list above'
    advice += "."
    lines = [interpreter.describe() for interpreter in found]
    lines += [f"{interpreter.describe()}: too old for workers" for interpreter in installed]
    detail = f"{detail}; asked by {asked}" if asked else detail
    return InterpreterNotFoundError(request, lines, env=env, detail=detail, advice=advice)


def _not_found(
    request: str, found: list[Interpreter], env: str, detail: str, asked: str
) -> InterpreterNotFoundError:
    detail = f"{detail}; asked by {asked}" if asked else detail
    return InterpreterNotFoundError(
        request, [interpreter.describe() for interpreter in found], env=env, detail=detail
    )
