"""Plain pickle (by name) that refuses what names the caller's script.

Plain pickle sends a function or a class by its module and name. A worker cannot import the
caller's ``__main__`` (its own ``__main__`` is the worker), so anything of the script pickled by
name fails there, late and obscurely (``AttributeError: Can't get attribute 'f' on <module
'envrunner.worker'>``). This pickler checks every object it writes, at any depth (inside
lists, ``functools.partial``, bound methods, numpy object arrays), and raises a clear
:class:`EncodeError` in the caller instead.

This module is part of the sealed worker runtime.
"""

from __future__ import annotations

import io
import pickle
import types
from typing import Any, Callable, Optional

from .errors import EncodeError

__all__ = ["ScriptObjectError", "dumps", "script_object"]


class ScriptObjectError(EncodeError):
    """Something defined in ``__main__`` was about to be pickled by name."""

    def __init__(self, message: str, what: str = "", found: Any = None) -> None:
        super().__init__(message, what=what)
        self.found = found


def script_object(obj: Any) -> Optional[str]:
    """``"function __main__.f"`` when pickle would send ``obj`` by a ``__main__`` name."""
    if isinstance(obj, (types.FunctionType, type)) and getattr(obj, "__module__", "") == "__main__":
        kind = "class" if isinstance(obj, type) else "function"
        return f"{kind} __main__.{obj.__qualname__}"
    cls = type(obj)
    if getattr(cls, "__module__", "") == "__main__":
        return f"instance of class __main__.{cls.__qualname__}"
    return None


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        found = script_object(obj)
        if found is not None:
            raise ScriptObjectError(_message(found), what=found.split()[-1], found=obj)
        return NotImplemented


def _message(found: str) -> str:
    name = found.rsplit(maxsplit=1)[-1]
    short = name.split(".", 1)[1].split(".")[0]
    if found.startswith("instance"):
        return (
            f"it holds an {found}, which cannot travel to a worker on another Python version: "
            "pickle sends it by its class's name, and the worker cannot import your script; "
            f"move {short} into a module next to your script (the worker imports it from there)"
        )
    return (
        f"the {found} cannot travel as a value to a worker on another Python version: pickle "
        "sends it by name, and the worker cannot import your script; "
        f"move {short} into a module next to your script (the worker imports it from there)"
    )


def dumps(
    obj: Any,
    protocol: int = 5,
    buffer_callback: Optional[Callable[[pickle.PickleBuffer], Any]] = None,
) -> bytes:
    """``pickle.dumps``, refusing anything of ``__main__`` with :class:`ScriptObjectError`."""
    out = io.BytesIO()
    _Pickler(out, protocol=protocol, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()
