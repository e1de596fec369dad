"""``envrunner gc``: what the cache and the manifests' folders hold that nothing asks for.

May import: the standard library, filelock, and ``envrunner._home``, ``_envkey``, ``_manifest``,
``_records``.

::

    manifests shown ──► their keys (resolve) ──► envs/<key> kept, with the build it points at
    envs/            ──► other builds: "not asked for";  folders without a record whose key no
                         process is building: "partial build"
    manifest folders ──► lock files envrunner wrote for environments the manifest no longer has
    logs/            ──► build logs older than the limit
    each with its size: gc says how much it frees
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import _home
from ._envkey import resolve
from ._manifest import Manifest
from ._records import read_record, size

__all__ = ["LOG_DAYS", "Garbage", "garbage", "remove"]

#: Build logs older than this many days are garbage.
LOG_DAYS = 14.0
_LOCK_HEADER = re.compile(r"^# envrunner lock of environment '([^']+)' \(([^)]+)\)")


@dataclass(frozen=True)
class Garbage:
    """One thing ``gc`` would remove: its path, why, and the bytes it holds."""

    path: Path
    reason: str
    bytes: int
    also: tuple[Path, ...] = ()  # removed with it (a build folder behind its link)


def _being_built(envs: Path, key: str) -> bool:
    import filelock

    lock = filelock.FileLock(str(envs / f"{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    lock.release()
    return False


def _builds(manifests: Sequence[Manifest]) -> list[Garbage]:
    wanted: set[str] = set()
    for manifest in manifests:
        for spec in manifest:
            try:
                resolved = resolve(spec)
            except Exception:
                continue
            if resolved.key:
                wanted.add(resolved.key)
    envs = _home.envs_dir()
    if not envs.is_dir():
        return []
    out: list[Garbage] = []
    linked: set[Path] = set()
    for path in sorted(envs.iterdir()):
        if path.is_symlink():
            target = envs / os.readlink(path)
            linked.add(target)
            if path.name not in wanted:
                record = read_record(path) or {}
                reason = f"not asked for (was {record.get('name', '?')!r})"
                out.append(Garbage(path, reason, size(target) if target.is_dir() else 0, (target,)))
    for path in sorted(envs.iterdir()):
        if path.is_symlink() or not path.is_dir() or path in linked:
            continue
        key = path.name.split(".", 1)[0]
        if read_record(path) is None or path.name != key:
            if _being_built(envs, key):
                continue
            out.append(Garbage(path, "partial build (interrupted or failed)", size(path)))
        elif key not in wanted:
            record = read_record(path) or {}
            out.append(
                Garbage(path, f"not asked for (was {record.get('name', '?')!r})", size(path))
            )
    return out


def _lock_files(manifests: Sequence[Manifest]) -> list[Garbage]:
    out: list[Garbage] = []
    for manifest in manifests:
        names = {spec.name for spec in manifest}
        folder = manifest.path.parent
        for path in sorted([*folder.glob("pylock.*.toml"), *folder.glob("*.lock.txt")]):
            try:
                with open(path, encoding="utf-8", errors="replace") as stream:
                    first = stream.readline()
            except OSError:
                continue
            match = _LOCK_HEADER.match(first)
            if match and match.group(2) == manifest.path.name and match.group(1) not in names:
                reason = f"lock of {match.group(1)!r}, which {manifest.path.name} no longer has"
                out.append(Garbage(path, reason, size(path)))
    return out


def _logs(days: float) -> list[Garbage]:
    logs = _home.logs_dir()
    if not logs.is_dir():
        return []
    limit = time.time() - days * 86400
    out = []
    for path in sorted(logs.glob("*.log")):
        try:
            if path.stat().st_mtime < limit:
                out.append(Garbage(path, f"build log older than {days:g} days", size(path)))
        except OSError:
            continue
    return out


def garbage(manifests: Sequence[Manifest], log_days: float = LOG_DAYS) -> list[Garbage]:
    """What ``gc`` would remove: builds no manifest shown asks for, abandoned partial builds,
    lock files of environments the manifests no longer have, and old build logs."""
    return [*_builds(manifests), *_lock_files(manifests), *_logs(log_days)]


def remove(item: Garbage) -> None:
    """Remove one piece of garbage (and the file lock beside a build)."""
    for path in (item.path, *item.also):
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
    if item.path.parent == _home.envs_dir() and "." not in item.path.name:
        Path(str(item.path) + ".lock").unlink(missing_ok=True)
