"""Find the Python interpreter a manifest's ``python:`` asks for (DESIGN.md layer 2).

May import: the standard library and ``envrunner._interpreter_probe``,
``envrunner._interpreter_search``, ``envrunner._runtime.errors``.

``find_interpreter`` takes a version (the newest matching CPython that ``discover`` finds,
outside virtualenvs first) or a path (probed as it is), and says what went wrong when nothing
fits: the request, where it was written, and every interpreter found. The search lives in
``_interpreter_search``, the probe and its cache in ``_interpreter_probe``; their public names
are re-exported here.
"""

from __future__ import annotations

import re

from ._interpreter_probe import MIN_VERSION, Interpreter, absolute_path, inspect_interpreter
from ._interpreter_search import discover, discover_all
from ._runtime.errors import InterpreterNotFoundError

__all__ = [
    "MIN_VERSION",
    "Interpreter",
    "discover",
    "find_interpreter",
    "inspect_interpreter",
]

_VERSION_REQUEST = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")


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
    if match is None:
        detail = 'expected a version such as "3.12" or a path to an interpreter'
        raise _not_found(request, discover(), env, detail, asked)
    wanted = tuple(int(part) for part in match.groups() if part is not None)
    if wanted[0] < MIN_VERSION[0] or (len(wanted) > 1 and wanted[:2] < MIN_VERSION):
        raise _too_old(request, wanted, discover(), env, asked)
    # A minor version asked: only the candidates that may be it are probed (every one that
    # is, so the choice below is the full discovery's); the full list only for an error.
    found = discover((wanted[0], wanted[1])) if len(wanted) > 1 else discover()
    matching = [
        interpreter
        for interpreter in found
        if interpreter.implementation == "cpython" and interpreter.version[: len(wanted)] == wanted
    ]
    if not matching:
        detail = f"no CPython {request} was found"
        raise _not_found(request, discover(), env, detail, asked)
    # Newest first, outside a virtualenv first; on a tie the place searched first wins.
    ranked = sorted(
        enumerate(matching), key=lambda item: (not item[1].is_venv, item[1].version, -item[0])
    )
    return ranked[-1][1]


def _find_path(request: str, env: str, asked: str) -> Interpreter:
    path = absolute_path(request)
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
        for interpreter in discover_all()
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
