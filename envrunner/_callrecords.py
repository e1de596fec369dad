"""Call records: what ran, where, with what code and packages, and how it ended. Opt-in.

May import: the standard library, ``envrunner._home``, ``envrunner._identity``,
``envrunner._callkey``.

Records live in one SQLite database (``$ENVRUNNER_RECORDS``, default
``<ENVRUNNER_HOME>/runs.sqlite``) in WAL mode, so that several scripts (and their threads) write
at once while ``envrunner runs`` reads. One row per call, written when the call ends::

    id            the call's id (hex)             task       module.qualname
    started/ended seconds since the epoch         outcome    "ok", "error: ValueError", ...
    cache         "hit", "miss" or "off"          cache_key  the result's key (or null)
    env, env_key  the environment and its key     python     its interpreter's version
    host          socket.gethostname()            project    the caller's project folder
    git_commit    HEAD there (null: not git)      git_dirty  uncommitted changes (null: no git)
    data          JSON: argument digests by name, the function's identity parts, packages

Never environment variables, argument values, or anything else that may hold a secret: arguments
appear as digests only.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._callkey import CallKey, EnvFacts, describe_packages
from ._home import records_path
from ._identity import describe_changes

__all__ = [
    "CallRecord",
    "RecordStore",
    "UnknownRecordError",
    "call_record",
    "caller_project_dir",
    "diff_records",
    "new_call_id",
    "outcome_of",
    "project_state",
    "this_host",
]

SCHEMA_VERSION = 1
GIT_TIMEOUT = 3.0
_COLUMNS = [
    "id",
    "task",
    "started",
    "ended",
    "outcome",
    "cache",
    "cache_key",
    "env",
    "env_key",
    "python",
    "host",
    "project",
    "git_commit",
    "git_dirty",
    "data",
]


class UnknownRecordError(LookupError):
    """No record, or more than one, has the id asked for."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class CallRecord:
    """One call, as ``envrunner runs show`` prints it (see the module docstring)."""

    id: str
    task: str
    started: float
    ended: float | None
    outcome: str
    cache: str
    env: str
    env_key: str | None
    python: str
    host: str
    project: str | None
    git_commit: str | None
    git_dirty: bool | None
    cache_key: str | None = None
    arguments: Mapping[str, str] = field(default_factory=dict)
    code: Mapping[str, str] = field(default_factory=dict)
    packages: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as plain data (``--json``)."""
        out = {name: getattr(self, name) for name in _COLUMNS if name != "data"}
        out.update(
            arguments=dict(self.arguments), code=dict(self.code), packages=dict(self.packages)
        )
        return out


def call_record(
    *,
    call_id: str,
    task: str,
    key: CallKey | None,
    env: EnvFacts,
    started: float,
    ended: float | None,
    error: BaseException | str | None,
    cache: str,
    project: tuple[Path, str | None, bool | None],
) -> CallRecord:
    """A record of one call, from what the runner holds when it ends.

    Args:
        call_id: :func:`new_call_id`, made when the call was submitted.
        task: The task's qualified name (``module.qualname``).
        key: The call's :class:`~envrunner._callkey.CallKey` (made even when the cache is off),
            or None when its arguments have no digest.
        env: The environment's facts (:func:`envrunner._cache.env_facts`, once per runner).
        started, ended: ``time.time()`` at submission and completion.
        error: The call's exception (or its type's name, as a worker reports it), None when
            it returned.
        cache: ``"hit"``, ``"miss"`` or ``"off"``.
        project: ``(folder, commit, dirty)``: :func:`caller_project_dir` and
            :func:`project_state` of it, taken once per runner.
    """
    folder, commit, dirty = project
    return CallRecord(
        id=call_id,
        task=task,
        started=started,
        ended=ended,
        outcome=outcome_of(error),
        cache=cache,
        env=env.name,
        env_key=env.key,
        python=env.python,
        host=this_host(),
        project=str(folder),
        git_commit=commit,
        git_dirty=dirty,
        cache_key=key.key if key is not None and cache != "off" else None,
        arguments=dict(key.argument_digests) if key is not None else {},
        code=dict(key.identity.parts) if key is not None else {},
        packages=dict(env.packages),
    )


def outcome_of(error: BaseException | str | None) -> str:
    """``"ok"``, ``"cancelled"`` or ``"error: ValueError"`` (the type's name, never its text).

    ``error`` is an exception, or the name of its type (``"mod.MyError"`` counts as
    ``MyError``).
    """
    if error is None:
        return "ok"
    name = error.rpartition(".")[2] if isinstance(error, str) else type(error).__name__
    if name == "CancelledError":
        return "cancelled"
    return f"error: {name}"


def new_call_id() -> str:
    """A fresh call id: 32 hex digits, unique across processes and hosts."""
    return uuid.uuid4().hex


def caller_project_dir() -> Path:
    """The caller's project folder: the running script's folder, else the current one."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    return Path(script).resolve().parent if script else Path.cwd()


def project_state(folder: Path | None = None) -> tuple[str | None, bool | None]:
    """The git commit of ``folder``'s work tree and whether it has changes; (None, None) when
    it is not in a git work tree, git is missing or slower than ``GIT_TIMEOUT`` seconds."""
    where = str(folder or caller_project_dir())
    quiet = {"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}
    env = {**os.environ, **quiet}
    try:
        head = subprocess.run(
            ["git", "-C", where, "rev-parse", "--verify", "HEAD"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            env=env,
            check=False,
        )
        if head.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "-C", where, "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return head.stdout.strip(), dirty


def this_host() -> str:
    """This machine's name, as records keep it."""
    return socket.gethostname()


class RecordStore:
    """The records database; safe to share between threads, and between processes.

    Args:
        path: The database file (default ``$ENVRUNNER_RECORDS`` or ``<home>/runs.sqlite``).
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else records_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():  # private to the user, as the rest of the home
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, task TEXT NOT NULL, "
            "started REAL NOT NULL, ended REAL, outcome TEXT NOT NULL, cache TEXT NOT NULL, "
            "cache_key TEXT, env TEXT NOT NULL, env_key TEXT, python TEXT NOT NULL, "
            "host TEXT NOT NULL, project TEXT, git_commit TEXT, git_dirty INTEGER, "
            "data TEXT NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS runs_task ON runs (task, started)")
        self._db.execute("CREATE INDEX IF NOT EXISTS runs_started ON runs (started)")
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def __repr__(self) -> str:
        return f"<RecordStore path='{self.path}'>"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, record: CallRecord) -> None:
        """Write one record (a record with the same id is replaced)."""
        data = json.dumps(
            {
                "arguments": dict(record.arguments),
                "code": dict(record.code),
                "packages": dict(record.packages),
            },
            sort_keys=True,
        )
        row = record.to_json()
        row["git_dirty"] = None if record.git_dirty is None else int(record.git_dirty)
        values = [row[name] for name in _COLUMNS[:-1]] + [data]
        marks = ", ".join("?" * len(_COLUMNS))
        with self._lock:
            self._db.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}) VALUES ({marks})", values
            )

    def list(self, task: str | None = None, limit: int | None = 50) -> list[CallRecord]:
        """Records, newest first; ``task`` matches the qualified or the short name."""
        query = f"SELECT {', '.join(_COLUMNS)} FROM runs"
        params: list[Any] = []
        if task is not None:
            query += " WHERE task = ? OR task LIKE ? ESCAPE '\\'"
            escaped = task.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params += [task, f"%.{escaped}"]
        query += " ORDER BY started DESC"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [_from_row(row) for row in rows]

    def get(self, id_prefix: str) -> CallRecord:
        """The record whose id starts with ``id_prefix``.

        Raises:
            UnknownRecordError: none does, or several do.
        """
        if not id_prefix or not all(c in "0123456789abcdef" for c in id_prefix.lower()):
            raise UnknownRecordError(
                f"{id_prefix!r} is not a call id: ids are hex digits (see envrunner runs)"
            )
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE id LIKE ? LIMIT 2",
                [id_prefix.lower() + "%"],
            ).fetchall()
        if not rows:
            raise UnknownRecordError(
                f"no call record has id {id_prefix!r} in {self.path} (envrunner runs lists them)"
            )
        if len(rows) > 1:
            raise UnknownRecordError(f"several call records start with {id_prefix!r}: give more")
        return _from_row(rows[0])


def _from_row(row: tuple[Any, ...]) -> CallRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    data = json.loads(values.pop("data"))
    dirty = values.pop("git_dirty")
    return CallRecord(
        **values,
        git_dirty=None if dirty is None else bool(dirty),
        arguments=data.get("arguments", {}),
        code=data.get("code", {}),
        packages=data.get("packages", {}),
    )


def diff_records(a: CallRecord, b: CallRecord) -> list[str]:
    """What differed between two calls, one line each: code, packages, arguments, where."""
    lines = []
    if a.task != b.task:
        lines.append(f"task: {a.task} -> {b.task} (a diff is most useful within one task)")
    for change in describe_changes(a.code, b.code, b.task):
        lines.append(f"code: {change}")
    if a.env != b.env:
        lines.append(f"environment: {a.env} -> {b.env}")
    elif a.env_key != b.env_key:
        lines.append(f"environment {b.env!r}: key {a.env_key} -> {b.env_key}")
    if a.python != b.python:
        lines.append(f"python: {a.python} -> {b.python}")
    for change in describe_packages(a.packages, b.packages):
        lines.append(f"package: {change}")
    for name in sorted(set(a.arguments) | set(b.arguments)):
        before, after = a.arguments.get(name), b.arguments.get(name)
        if before == after:
            continue
        if before is None:
            lines.append(f"argument {name}: only in {b.id[:8]}")
        elif after is None:
            lines.append(f"argument {name}: only in {a.id[:8]}")
        else:
            lines.append(f"argument {name}: {before[:12]} -> {after[:12]} (digests)")
    if (a.git_commit, a.git_dirty) != (b.git_commit, b.git_dirty):
        lines.append(f"git: {_git(a)} -> {_git(b)}")
    if a.host != b.host:
        lines.append(f"host: {a.host} -> {b.host}")
    if a.outcome != b.outcome:
        lines.append(f"outcome: {a.outcome} -> {b.outcome}")
    return lines


def _git(record: CallRecord) -> str:
    if record.git_commit is None:
        return "no git"
    return record.git_commit[:12] + (" (dirty)" if record.git_dirty else "")
