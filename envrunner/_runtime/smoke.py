"""Smoke checks as a worker runs them: snippets, imports of requirements, who the worker is.

``envrunner smoke`` calls these by reference in a worker of each environment. They return plain
data (dicts of strings and numbers), never raise for what they check, and capture what a check
prints, so that the caller reports every outcome in its own table and files.

This module is part of the sealed worker runtime: standard library only, parses on Python 3.9.
"""

import contextlib
import importlib
import io
import linecache
import os
import sys
import time
import traceback
from typing import Any, Dict, Iterable, List, Optional

__all__ = ["import_distributions", "import_names", "run_snippet", "worker_info"]

#: Longest captured output (characters) a check sends back: the end is kept.
OUTPUT_LIMIT = 20_000


def worker_info() -> Dict[str, Any]:
    """Who answers: the worker's Python version, executable, prefix and pid."""
    return {
        "python": ".".join(str(part) for part in sys.version_info[:3]),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "pid": os.getpid(),
    }


def run_snippet(code: str, filename: str) -> Dict[str, Any]:
    """Run a Python snippet in a fresh namespace, as ``__main__`` would run it.

    Args:
        code: The snippet (an import, an assert, a small computation).
        filename: The name its traceback shows (``<smoke environments.yaml:12>``).

    Returns:
        ``{"passed", "seconds", "error", "traceback", "output"}``: ``error`` is
        ``"Type: message"`` (empty when it passed), ``traceback`` the snippet's own frames,
        ``output`` what it printed.
    """
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    namespace: Dict[str, Any] = {"__name__": "__smoke__", "__builtins__": __builtins__}
    output = io.StringIO()
    started = time.perf_counter()
    error = ""
    trace = ""
    try:
        compiled = compile(code, filename, "exec")
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            exec(compiled, namespace)
    except BaseException as exc:  # a snippet's SystemExit or KeyboardInterrupt is its failure
        error = _describe_error(exc)
        trace = _own_frames(exc, filename)
    finally:
        linecache.cache.pop(filename, None)
    return {
        "passed": not error,
        "seconds": time.perf_counter() - started,
        "error": error,
        "traceback": trace,
        "output": _tail(output.getvalue()),
    }


def import_names(distribution: Any, fallback: str) -> List[str]:
    """The top-level modules a distribution provides, as ``import`` spells them.

    ``top_level.txt`` when the distribution has one, else the top-level packages and modules
    its RECORD lists, else ``fallback`` with ``-`` read as ``_``. Private names (``_yaml``) are
    left out when public ones exist.
    """
    names: List[str] = []
    listed = distribution.read_text("top_level.txt") if distribution is not None else None
    if listed:
        names = [line.strip().replace("/", ".") for line in listed.splitlines() if line.strip()]
    elif distribution is not None:
        names = _record_names(distribution.files or ())
    if not names:
        names = [fallback.replace("-", "_").replace(".", "_")]
    public = [name for name in names if not name.startswith("_")]
    return sorted(set(public or names))


def _record_names(files: Iterable[Any]) -> List[str]:
    found = set()
    for entry in files:
        parts = str(entry).replace("\\", "/").split("/")
        first = parts[0]
        if first in ("", "..", "__pycache__") or first.endswith((".dist-info", ".data")):
            continue
        if len(parts) > 1:
            if first.isidentifier():
                found.add(first)
            continue
        stem = first.split(".", 1)[0]
        if first.endswith((".py", ".so", ".pyd")) and stem.isidentifier():
            found.add(stem)
    return sorted(found)


def import_distributions(
    names: List[str], optional: Optional[List[str]] = None
) -> List[Dict[str, Any]]:
    """Import every top-level module of each named distribution.

    Args:
        names: Distribution names as requirements spell them (``PyYAML``, ``typing-extensions``).
        optional: Those whose requirement carries an environment marker: not being installed is
            then a skip, not a failure.

    Returns:
        One dict per name: ``distribution``, ``version``, ``modules``, ``passed``, ``skipped``,
        ``seconds``, ``error`` (``"module: Type: message"`` lines) and ``traceback``.
    """
    conditional = set(optional or ())
    results = []
    for name in names:
        started = time.perf_counter()
        distribution = _find_distribution(name)
        row: Dict[str, Any] = {
            "distribution": name,
            "version": distribution.version if distribution is not None else "",
            "modules": [],
            "passed": True,
            "skipped": False,
            "error": "",
            "traceback": "",
            "output": "",
        }
        if distribution is None and name in conditional:
            row["skipped"] = True
            row["error"] = f"{name} is not installed: its requirement's marker leaves it out here"
        elif distribution is None:
            row["passed"] = False
            row["error"] = f"{name} is not installed in this environment"
        else:
            row["modules"] = import_names(distribution, name)
            errors, traces = [], []
            output = io.StringIO()  # what importing prints stays out of the caller's table
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                for module in row["modules"]:
                    try:
                        importlib.import_module(module)
                    except BaseException as exc:
                        errors.append(f"import {module}: {_describe_error(exc)}")
                        traces.append(_below_this_frame(exc))
            row["passed"] = not errors
            row["error"] = "\n".join(errors)
            row["traceback"] = "\n".join(traces)
            row["output"] = _tail(output.getvalue())
        row["seconds"] = time.perf_counter() - started
        results.append(row)
    return results


def _find_distribution(name: str) -> Any:
    from importlib import metadata

    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        pass
    wanted = _canonical(name)
    for distribution in metadata.distributions():
        if _canonical(distribution.metadata["Name"] or "") == wanted:
            return distribution
    return None


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _describe_error(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable>"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _own_frames(exc: BaseException, filename: str) -> str:
    """The traceback from the snippet's first frame on (the runner's frames left out)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _below_this_frame(exc: BaseException) -> str:
    """The traceback without its first frame (the function here that caught it)."""
    tb = exc.__traceback__
    return "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))


def _tail(text: str) -> str:
    return text if len(text) <= OUTPUT_LIMIT else "...\n" + text[-OUTPUT_LIMIT:]
