"""An environment's content key: what it is built from, hashed (DESIGN.md layer 3).

May import: the standard library and ``envrunner._home``, ``_build_steps``, ``_interpreters``,
``_locks``, ``_manifest``, ``_runtime``.

::

    EnvSpec ──► interpreter (find_interpreter) ──► installer (uv | pip | external)
            ──► lock state (fresh | stale | missing | given)
            ──► key material ──► sha256 ──► key ──► $ENVRUNNER_HOME/envs/<key>

An environment is built once per *key*: a hash of everything that changes what gets installed
(the normalized requirements, the contents of requirements files, installer options, the
interpreter's full version, platform and location, the installer, the worker runtime's
requirements, and the lock's digest when the build installs from a lock) and of nothing else
(not the manifest's folder, not the order of keys, not the environment's name, not its ``env:``
variables). Environments are shared by every project that asks for the same thing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _home
from ._build_steps import find_uv
from ._interpreters import Interpreter, find_interpreter
from ._locks import LockState, check
from ._manifest import EnvSpec
from ._runtime import RUNTIME_REQUIREMENTS
from ._runtime.errors import BuildError

__all__ = ["BUILD_FORMAT", "Resolved", "key_material", "resolve"]

#: Bump when what a built environment holds changes shape: every key changes with it.
BUILD_FORMAT = 1


@dataclass(frozen=True)
class Resolved:
    """An environment spec matched with its interpreter, installer and key.

    Attributes:
        spec: The manifest's spec.
        interpreter: The interpreter it is built from (or used as it is).
        installer: ``"uv"``, ``"pip"`` or ``"external"`` (used as it is, never built).
        key: The content key, or None for an external environment.
        path: The environment's folder (``envs/<key>``, or the external virtualenv/prefix).
        material: What the key is a hash of (for ``envrunner info``).
        lock: Its lock file's state (None for an external environment).
    """

    spec: EnvSpec
    interpreter: Interpreter
    installer: str
    key: str | None
    path: Path
    material: dict[str, Any]
    lock: LockState | None = None

    @property
    def python(self) -> Path:
        """The interpreter that runs this environment's workers."""
        if self.key is None:
            return self.interpreter.path
        return self.path / "bin" / "python"

    @property
    def bin_dir(self) -> Path:
        return self.python.parent

    @property
    def lock_path(self) -> Path:
        """The file lock that one build of this key at a time holds (not the lock file)."""
        return self.path.with_name(self.path.name + ".lock")


def _installer(spec: EnvSpec) -> str:
    if spec.external:
        return "external"
    if spec.installer == "pip":
        return "pip"
    if spec.installer == "uv":
        if find_uv() is None:
            raise BuildError(
                spec.name,
                "resolve",
                "the manifest asks for installer: uv, but uv is not installed",
                hint=f"{spec.where('installer')}: install uv (pip install uv) or write "
                "installer: pip",
            )
        return "uv"
    return "uv" if find_uv() is not None else "pip"


def _interpreter(spec: EnvSpec) -> Interpreter:
    where = str(spec.where("python"))
    request = str(spec.python_path) if spec.python_path is not None else spec.python
    return find_interpreter(request, env=spec.name, where=where)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _find_links(links: Iterable[str]) -> list[Any]:
    out: list[Any] = []
    for link in links:
        folder = Path(link)
        if "://" not in link and folder.is_dir():
            names = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file())
            out.append({"folder": link, "files": names})
        else:
            out.append(link)
    return out


def key_material(
    spec: EnvSpec, interpreter: Interpreter, installer: str, lock: LockState | None = None
) -> dict[str, Any]:
    """Everything that changes what a build of ``spec`` produces, and nothing else."""
    requirements = sorted({" ".join(r.split()) for r in spec.requirements})
    material: dict[str, Any] = {
        "format": BUILD_FORMAT,
        "python": {
            "version": interpreter.full_version,
            "implementation": interpreter.implementation,
            "platform": interpreter.platform,
            "path": os.path.realpath(interpreter.path),
        },
        "requirements": requirements,
        "requirement_files": [_file_digest(p) for p in spec.requirement_files],
        "pip": {
            "index_url": spec.pip.index_url,
            "extra_index_urls": list(spec.pip.extra_index_urls),
            "find_links": _find_links(spec.pip.find_links),
            "pre": spec.pip.pre,
        },
        "system_site_packages": spec.system_site_packages,
        "installer": installer,
        "runtime": list(RUNTIME_REQUIREMENTS),
    }
    if lock is not None and lock.used:
        material["lock"] = lock.digest
    return material


def resolve(spec: EnvSpec) -> Resolved:
    """Match a spec with its interpreter and compute its key (no build; milliseconds when cached).

    Raises:
        InterpreterNotFoundError: No interpreter matches ``python:``.
        BuildError: ``installer: uv`` without uv.
    """
    interpreter = _interpreter(spec)
    installer = _installer(spec)
    if installer == "external":
        prefix = Path(interpreter.prefix)
        return Resolved(spec, interpreter, installer, None, prefix, {"external": True})
    lock = check(spec, interpreter, installer)
    material = key_material(spec, interpreter, installer, lock)
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    key = digest[:20]
    return Resolved(spec, interpreter, installer, key, _home.envs_dir() / key, material, lock)
