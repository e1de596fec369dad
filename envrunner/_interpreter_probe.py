"""Ask one Python interpreter what it is, and remember the answer (DESIGN.md layer 2).

May import: the standard library and ``envrunner._home``, ``envrunner._runtime.errors``.

``probe`` runs a candidate once with ``-I`` and a one-line script; what it says becomes an
``Interpreter``. The answer is cached in ``home()/interpreters.json`` by file identity (path,
and the resolved file's mtime and size), so a later look costs a ``stat`` and no subprocess.
A candidate that cannot answer raises ``InterpreterNotFoundError`` saying why (a pyenv shim
of an inactive version is named as such); lasting failures are cached too.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._home import home
from ._runtime.errors import InterpreterNotFoundError

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
    cache = InterpreterCache()
    interpreter = probe(absolute_path(path), source, cache)
    cache.save()
    return interpreter


class NotCachedError(LookupError):
    """:func:`probe` with ``run=False`` found nothing cached for a path."""


def probe(path: Path, source: str, cache: InterpreterCache, run: bool = True) -> Interpreter:
    """What ``path`` is, from the cache or by running it once.

    Raises:
        InterpreterNotFoundError: It is not a usable interpreter (the detail says why).
        NotCachedError: With ``run=False``, nothing is cached for it (it was not run).
    """
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
    if interpreter is None and not run:
        raise NotCachedError(request)
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
        shim = is_pyenv_shim(path.parent)
        if shim:
            detail += (
                "; it is a pyenv shim, which runs only the versions pyenv has active here: "
                f"use {pyenv_root() / 'versions'}/<version>/bin/{path.name} instead, "
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


class InterpreterCache:
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


def pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or "~/.pyenv").expanduser()


def is_pyenv_shim(folder: Path) -> bool:
    """True for a pyenv shims folder: it runs only the versions pyenv has active."""
    if folder.name != "shims":
        return False
    parent = folder.parent
    return (
        parent == pyenv_root()
        or (parent / "versions").is_dir()
        or (parent / "libexec" / "pyenv").exists()
        or parent.name.startswith("pyenv")
    )


def absolute_path(path: str | os.PathLike[str]) -> Path:
    """Absolute, with ``~`` expanded, symlinks kept."""
    return Path(path).expanduser().absolute()
