"""The value format's extension codes and limits, shared by the encoder and the decoder.

May import: the standard library.

The table of what each code carries is in ``codec.py``; ``encoder.py`` writes it and
``decoder.py`` reads it. This module is part of the sealed worker runtime.
"""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["BODY", "MAX_BODY", "MAX_FRAME", "path_types", "type_name"]

TUPLE, SET, FROZENSET, COMPLEX, BIGINT = 1, 2, 3, 4, 5
DATETIME, DATE, TIME, TIMEDELTA, DECIMAL, UUID, PATH = 10, 11, 12, 13, 14, 15, 16
NDARRAY, NPSCALAR = 20, 21
PICKLE, CLOUDPICKLE = 30, 31
REF, KEPT = 40, 41
FUTURE = 42  # a future's place, in the caller only: its value goes there before sending
BODY = 50

#: Bodies above this many bytes travel out of band (a header holds at most 64 MiB).
MAX_BODY = 16 * 1024 * 1024
#: The largest frame a receiver accepts by default (``Runner(max_message_bytes=)``).
MAX_FRAME = 1 << 30

PATH_NAMES = frozenset({"PurePath", "PurePosixPath", "PureWindowsPath", "Path", "PosixPath"})


def path_types() -> Dict[str, Any]:
    """pathlib's classes by name (pathlib, decimal and uuid load only when a value needs them:
    a worker starts faster without them)."""
    import pathlib

    return {name: getattr(pathlib, name) for name in PATH_NAMES}


def type_name(obj: Any) -> str:
    """``module.QualName`` of ``obj``'s type, for messages."""
    cls = type(obj)
    module = getattr(cls, "__module__", "") or ""
    qualname = getattr(cls, "__qualname__", cls.__name__)
    return qualname if module == "builtins" else f"{module}.{qualname}"
