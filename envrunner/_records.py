"""Build records: what a complete build holds, and which key a manifest's environment last used.

May import: the standard library and ``envrunner._home``, ``_build_steps``, ``_envkey``,
``_requirements``, ``_runtime``.

::

    envs/<key>/envrunner.json   written LAST by a build: its presence marks the build complete
                                (what was asked, what got installed and in which role, size)
    names/<manifest hash>/NAME  the key NAME of that manifest last used: "stale" vs "missing"
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from . import _home
from ._build_steps import redact, write_atomic
from ._envkey import BUILD_FORMAT, Resolved
from ._requirements import canonical, requested
from ._runtime import RUNTIME_DISTRIBUTIONS
from ._runtime.errors import BuildError

__all__ = ["RECORD_NAME", "make_record", "packages", "read_record", "remember", "size", "state"]

RECORD_NAME = "envrunner.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """The record of a complete build in ``path``, or None (missing, partial or unreadable)."""
    try:
        data = json.loads((path / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def state(resolved: Resolved, manifest_path: Path | None = None) -> str:
    """``built``, ``stale`` (built before, for different content), ``missing`` or ``external``."""
    if resolved.key is None:
        return "external"
    if read_record(resolved.path) is not None:
        return "built"
    if manifest_path is not None:
        previous = _names_index(manifest_path, resolved.spec.name)
        if previous is not None and previous.is_file() and previous.read_text().strip():
            return "stale"
    return "missing"


def _names_index(manifest_path: Path, name: str) -> Path:
    digest = hashlib.sha256(str(manifest_path).encode()).hexdigest()[:16]
    return _home.home() / "names" / digest / name


def remember(resolved: Resolved, manifest_path: Path) -> None:
    """Note which key ``manifest_path``'s environment last used (for the ``stale`` state)."""
    if resolved.key is None:
        return
    index = _names_index(manifest_path, resolved.spec.name)
    try:
        if index.is_file() and index.read_text().strip() == resolved.key:
            return
        _home.make_dir(index.parent)
        write_atomic(index, resolved.key + "\n")
    except OSError:
        pass


def packages(env: str, python: Path) -> list[tuple[str, str, str]]:
    """What an environment holds: (name, version, installer) of each distribution.

    Its Python runs once, to say where it looks for packages (it must start before the build
    counts as complete); the metadata there is read in this process, which is much faster
    than importing importlib.metadata in that Python.
    """
    check = subprocess.run(
        [str(python), "-I", "-c", "import sys; print('\\n'.join(sys.path))"],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        raise BuildError(
            env, "check", f"the new environment's Python does not run: {check.stderr[-500:]}"
        )
    folders = [line for line in check.stdout.splitlines() if line and Path(line).is_dir()]
    found = set()
    for metadata, installer in _metadata_files(folders):
        name, version = _name_and_version(metadata)
        if name:
            found.add((name, version, _read(installer) if installer else ""))
    return sorted(found)


def _metadata_files(folders: list[str]) -> list[tuple[Path, Path | None]]:
    """Each distribution's metadata file (and INSTALLER file) in ``folders``.

    What ``importlib.metadata.distributions(path=folders)`` finds in a virtualenv
    (``*.dist-info/METADATA``, ``*.egg-info/PKG-INFO`` or an ``*.egg-info`` file), without
    importing it: that import alone took 10-24 ms of a 0.4 s build (#14).
    """
    found: list[tuple[Path, Path | None]] = []
    for folder in folders:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.name.endswith(".dist-info"):
                found.append((path / "METADATA", path / "INSTALLER"))
            elif entry.name.endswith(".egg-info"):
                found.append((path / "PKG-INFO" if entry.is_dir() else path, None))
    return found


def _name_and_version(metadata: Path) -> tuple[str, str]:
    """The ``Name`` and ``Version`` headers of a metadata file ('' where missing)."""
    name = version = ""
    text = _read(metadata)
    for line in text.splitlines():
        if not line.strip():
            break  # the headers end at the first empty line; the description follows
        key, _, value = line.partition(":")
        if key.lower() == "name" and not name:
            name = value.strip()
        elif key.lower() == "version" and not version:
            version = value.strip()
    return name, version


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def make_record(
    resolved: Resolved,
    installed: list[tuple[str, str, str]],
    seconds: float,
    manifest_path: Path | None,
    folder: Path,
) -> dict[str, Any]:
    """The record of a build of ``resolved`` into ``folder``."""
    spec = resolved.spec
    asked = requested(spec.requirements, spec.requirements_file)
    runtime = {canonical(n) for n in RUNTIME_DISTRIBUTIONS}
    listed = []
    for name, version, installer in installed:
        name_key = canonical(name)
        role = "requested" if name_key in asked else "dependency"
        if name_key in runtime and name_key not in asked:
            role = "runtime"
        elif name_key == "pip" and installer.strip() != "pip" and name_key not in asked:
            role = "installer"
        listed.append({"name": name, "version": version, "role": role})
    lock = resolved.lock
    return {
        "format": BUILD_FORMAT,
        "key": resolved.key,
        "name": spec.name,
        "manifest": str(manifest_path) if manifest_path else None,
        "spec": {  # never the env: variables, which may hold secrets
            "python": spec.python,
            "requirements": list(spec.requirements),
            "requirements_file": str(spec.requirements_file) if spec.requirements_file else None,
            "system_site_packages": spec.system_site_packages,
            "installer": resolved.installer,
        },
        "material": json.loads(redact(json.dumps(resolved.material))),
        "interpreter": {
            "path": str(resolved.interpreter.path),
            "version": ".".join(map(str, resolved.interpreter.version)),
        },
        "installer": resolved.installer,
        "lock": str(lock.path) if lock is not None and lock.used else None,
        "packages": listed,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(seconds, 3),
        "size_bytes": size(folder),
    }


def size(path: Path) -> int:
    """Bytes under ``path`` (a file's own size; links not followed below the top)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
