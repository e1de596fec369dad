"""Built environments, as the rest of envrunner uses them (DESIGN.md layer 3).

May import: ``envrunner._build_steps``, ``_envkey``, ``_records``, ``_build``, ``_gc``.

One name for what lives in four modules, each one concept::

    _envkey   the content key: EnvSpec + interpreter + installer + lock ──► key, Resolved
    _build    a build beside the current one, swapped in when complete; overlays
    _records  envrunner.json (a complete build), the built / stale / missing state
    _gc       what no manifest asks for, old logs and orphaned lock files
"""

from __future__ import annotations

from ._build import build, overlay
from ._build_steps import find_uv, redact
from ._envkey import BUILD_FORMAT, Resolved, key_material, resolve
from ._gc import garbage
from ._records import RECORD_NAME, read_record, remember, state

__all__ = [
    "BUILD_FORMAT",
    "RECORD_NAME",
    "Resolved",
    "build",
    "find_uv",
    "garbage",
    "key_material",
    "overlay",
    "read_record",
    "redact",
    "remember",
    "resolve",
    "state",
]
