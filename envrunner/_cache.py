"""The result cache: encoded results on disk, keyed by code, arguments and environment.

May import: the standard library, ``envrunner._callkey``, ``envrunner._digest``,
``envrunner._identity``, ``envrunner._home``.

A result is stored under its call's key (``envrunner._callkey``: the function's identity, the
arguments' digest, the environment's key and packages; re-exported here). Layout under the
cache folder (``$ENVRUNNER_CACHE``, default ``<ENVRUNNER_HOME>/results``)::

    entries/<k[:2]>/<key>        one result: header, payload, buffers, and a digest over them
    seen/<s[:2]>/<s>.json        per (task, argument digest): the last identity and
                                 environment stored, to say why a later call missed

Writers write ``entries/<k[:2]>/.<key>.<pid>.<random>.tmp`` and rename it over the entry, so
readers see a whole old entry or a whole new one, and two writers of one key leave one whole
entry. A reader checks the trailing digest; an entry that fails it (a torn disk write, an edit)
is removed and counts as a miss. An entry's modification time is its last use: a hit touches
it, and when the folder outgrows its limit (``$ENVRUNNER_CACHE_SIZE``, default 10 GB) the least
recently used entries go first. The limit is checked after writes, so several processes
writing at once may pass it briefly.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._callkey import CallKey, EnvFacts, call_key, describe_packages, env_facts
from ._digest import content_hash
from ._home import cache_dir, cache_limit
from ._identity import describe_changes

__all__ = [
    "CachedResult",
    "CallKey",
    "EntryInfo",
    "EnvFacts",
    "ResultCache",
    "call_key",
    "describe_packages",
    "env_facts",
]

MAGIC = b"envrunner-result-1\n"
_HEADER = struct.Struct("<Q")
_DIGEST_BYTES = 32
_STALE_TEMP_SECONDS = 3600


@dataclass(frozen=True)
class CachedResult:
    """A stored result, as the worker sent it."""

    payload: bytes
    buffers: list[memoryview]
    error: bool
    created: float


@dataclass(frozen=True)
class EntryInfo:
    """One entry, as ``envrunner cache list`` shows it."""

    key: str
    task: str
    env: str
    size: int
    created: float
    used: float
    error: bool
    path: Path
    header: Mapping[str, Any] = field(repr=False)


class ResultCache:
    """The on-disk store of results (see the module docstring for its layout).

    Args:
        root: Its folder (default ``$ENVRUNNER_CACHE`` or ``<ENVRUNNER_HOME>/results``).
        max_bytes: Its size limit (default ``$ENVRUNNER_CACHE_SIZE`` or 10 GB).
    """

    def __init__(self, root: Path | str | None = None, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()
        self.max_bytes = max_bytes if max_bytes is not None else cache_limit()
        self._written_since_scan: int | None = None

    def __repr__(self) -> str:
        return f"<ResultCache root='{self.root}' max_bytes={self.max_bytes}>"

    def _entry_path(self, key: str) -> Path:
        return self.root / "entries" / key[:2] / key

    def _seen_path(self, seen_id: str) -> Path:
        return self.root / "seen" / seen_id[:2] / f"{seen_id}.json"

    # ---------------------------------------------------------------- reading

    def get(self, key: CallKey) -> CachedResult | None:
        """The stored result of this call, or None (a corrupt entry is removed: a miss)."""
        path = self._entry_path(key.key)
        read = _read_entry(path)
        if read is None:
            return None
        header, body = read
        if header.get("key") != key.key:
            _unlink(path)
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        payload_size = int(header["payload"])
        payload = bytes(body[:payload_size])
        buffers = []
        offset = payload_size
        for size in header["buffers"]:
            buffers.append(body[offset : offset + size])
            offset += size
        return CachedResult(payload, buffers, bool(header["error"]), float(header["created"]))

    def miss_reason(self, key: CallKey) -> str | None:
        """Why a call that was stored before (same task, same arguments) missed, in one line.

        Returns None when this task was never stored with these arguments.
        """
        try:
            seen = json.loads(self._seen_path(key.seen_id).read_text())
        except (OSError, ValueError):
            return None
        reasons = describe_changes(seen.get("identity", {}), key.identity.parts, key.task)
        env = seen.get("env", {})
        changes = describe_packages(env.get("packages", {}), key.env.packages)
        label = f"environment {key.env.name!r}"
        if env.get("name") != key.env.name:
            reasons.append(f"runs in {label} instead of {env.get('name')!r}")
        elif changes:
            reasons.append(f"{label}: " + ", ".join(changes[:3]) + _more(changes, 3))
        elif env.get("python") != key.env.python:
            reasons.append(f"{label}: Python {env.get('python')} -> {key.env.python}")
        elif env.get("key") != key.env.key:
            reasons.append(f"{label} was rebuilt (key {env.get('key')} -> {key.env.key})")
        name = key.task.rpartition(".")[2]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(seen.get("time", 0))))
        if not reasons:
            return f"recomputing {name}(): its result of {when} was evicted or cleared"
        return (
            f"recomputing {name}(): "
            + "; ".join(reasons[:3])
            + _more(reasons, 3)
            + (f" since {when}")
        )

    # ---------------------------------------------------------------- writing

    def put(
        self,
        key: CallKey,
        payload: bytes,
        buffers: Sequence[bytes | bytearray | memoryview] = (),
        *,
        error: bool = False,
    ) -> Path:
        """Store a result (``error``: the payload is an encoded exception); returns its file."""
        views = [memoryview(b).cast("B") for b in buffers]
        now = time.time()
        header = {
            "key": key.key,
            "task": key.task,
            "created": now,
            "error": error,
            "payload": len(payload),
            "buffers": [v.nbytes for v in views],
            "identity": key.identity.digest,
            "parts": dict(key.identity.parts),
            "arguments": dict(key.argument_digests),
            "env": _env_json(key.env),
        }
        path = self._entry_path(key.key)
        if not self.root.exists():  # results may be private: the folder is the user's alone
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        size = _write_entry(path, header, payload, views)
        self._remember(key, now)
        self._maybe_evict(size)
        return path

    def _remember(self, key: CallKey, now: float) -> None:
        note = {
            "task": key.task,
            "time": now,
            "identity": dict(key.identity.parts),
            "env": _env_json(key.env),
        }
        # Advisory: remove, then rename into place. Renaming over a file costs ~0.3 ms on ext4
        # (it flushes the old one's data); a reader in between finds no note, and no reason.
        path = self._seen_path(key.seen_id)
        _unlink(path)
        _write_atomic(path, json.dumps(note).encode())

    def _maybe_evict(self, written: int) -> None:
        if self._written_since_scan is not None:
            self._written_since_scan += written
            if self._written_since_scan < self.max_bytes // 20:
                return
        self._written_since_scan = 0
        self.evict()

    def evict(self) -> int:
        """Remove least recently used entries until the folder is within its limit; count."""
        entries = sorted(self._files(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        removed = 0
        for path, size, _ in entries:
            if total <= self.max_bytes:
                break
            if _unlink(path):
                removed += 1
            total -= size
        return removed

    # ---------------------------------------------------------------- listing

    def _files(self) -> Iterator[tuple[Path, int, float]]:
        """(path, size, last use) of each entry; removes writers' temporaries left by crashes."""
        entries = self.root / "entries"
        now = time.time()
        try:
            buckets = list(os.scandir(entries))
        except FileNotFoundError:
            return
        for bucket in buckets:
            try:
                files = list(os.scandir(bucket.path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for item in files:
                try:
                    stat = item.stat()
                except FileNotFoundError:
                    continue
                if item.name.startswith("."):
                    if now - stat.st_mtime > _STALE_TEMP_SECONDS:
                        _unlink(Path(item.path))
                    continue
                yield Path(item.path), stat.st_size, stat.st_mtime

    def entries(self, task: str | None = None, older_than: float | None = None) -> list[EntryInfo]:
        """Whole entries, newest use first; ``task`` matches the qualified or the short name,
        ``older_than`` (seconds) keeps those unused for at least that long."""
        now = time.time()
        found = []
        for path, size, used in self._files():
            if older_than is not None and now - used < older_than:
                continue
            header = _read_header(path)
            if header is None or not _task_matches(str(header.get("task")), task):
                continue
            found.append(
                EntryInfo(
                    key=path.name,
                    task=str(header["task"]),
                    env=str(header.get("env", {}).get("name")),
                    size=size,
                    created=float(header["created"]),
                    used=used,
                    error=bool(header["error"]),
                    path=path,
                    header=header,
                )
            )
        found.sort(key=lambda e: e.used, reverse=True)
        return found

    def find(self, prefix: str) -> list[EntryInfo]:
        """The entries whose key starts with ``prefix``."""
        return [e for e in self.entries() if e.key.startswith(prefix)]

    def clear(self, task: str | None = None, older_than: float | None = None) -> int:
        """Remove matching entries (all by default) and their notes; returns how many."""
        removed = sum(_unlink(e.path) for e in self.entries(task, older_than))
        if task is None and older_than is None:
            for note in (self.root / "seen").glob("*/*.json"):
                _unlink(note)
        return removed


# --------------------------------------------------------------------------- files


def _env_json(env: EnvFacts) -> dict[str, Any]:
    return {
        "name": env.name,
        "key": env.key,
        "python": env.python,
        "packages": dict(sorted(env.packages.items())),
    }


def _more(items: Sequence[str], shown: int) -> str:
    return f" and {len(items) - shown} more" if len(items) > shown else ""


def _task_matches(task: str, wanted: str | None) -> bool:
    if wanted is None:
        return True
    return task == wanted or task.rpartition(".")[2] == wanted or task.endswith("." + wanted)


def _write_entry(
    path: Path, header: Mapping[str, Any], payload: bytes, views: Sequence[memoryview]
) -> int:
    head = json.dumps(header, sort_keys=True).encode()
    digest = content_hash()
    chunks: list[bytes | memoryview] = [MAGIC, _HEADER.pack(len(head)), head, payload, *views]
    for chunk in chunks:
        digest.update(chunk)
    chunks.append(digest.digest())
    return _write_atomic(path, *chunks)


def _write_atomic(path: Path, *chunks: bytes | memoryview) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    size = 0
    try:
        with open(temp, "wb") as out:
            for chunk in chunks:
                size += out.write(chunk)
        os.replace(temp, path)
    except BaseException:
        _unlink(temp)
        raise
    return size


def _read_entry(path: Path) -> tuple[dict[str, Any], memoryview] | None:
    """The header and the content after it, or None (a corrupt entry is removed)."""
    try:
        with open(path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            data = bytearray(size)
            view = memoryview(data)
            got = source.readinto(view)
    except FileNotFoundError:
        return None
    if got != size or size < len(MAGIC) + _HEADER.size + _DIGEST_BYTES:
        _unlink(path)
        return None
    digest = content_hash()
    digest.update(view[:-_DIGEST_BYTES])
    if digest.digest() != view[-_DIGEST_BYTES:] or view[: len(MAGIC)] != MAGIC:
        _unlink(path)
        return None
    start = len(MAGIC) + _HEADER.size
    (head_size,) = _HEADER.unpack(view[len(MAGIC) : start])
    try:
        header = json.loads(bytes(view[start : start + head_size]))
    except ValueError:
        _unlink(path)
        return None
    return header, view[start + head_size : -_DIGEST_BYTES].toreadonly()


def _read_header(path: Path) -> dict[str, Any] | None:
    """An entry's header without reading its content (for listing; not checked)."""
    try:
        with open(path, "rb") as source:
            start = source.read(len(MAGIC) + _HEADER.size)
            if not start.startswith(MAGIC) or len(start) < len(MAGIC) + _HEADER.size:
                return None
            (head_size,) = _HEADER.unpack(start[len(MAGIC) :])
            header = json.loads(source.read(head_size))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
