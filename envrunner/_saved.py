"""Saved calls: ``task.save(path, *args)`` writes one, ``envrunner run`` reads it.

::

    task.save(path, x) ─► SavedCall: the function (by reference when importable, else by value
                          or as source), the arguments (encoded as for a worker), the
                          environment's manifest entry and key, the project's import folders
                        ─► path: "#envrunner-call {header as JSON}\\n" + msgpack of the bytes
    envrunner run path ─► read_saved (format checked) ─► check_entry (the manifest's entry
                          now against the saved one) ─► _cli_run runs it

The first line is plain JSON, so ``head -1 FILE`` says what a file holds. ``FORMAT`` is bumped
whenever either part changes shape; a reader refuses a newer format with a message that says
which envrunner wrote it.

May import: the standard library, msgpack, ``envrunner._encode``, ``_envkey``, ``_manifest``,
``_options``, ``_process``, ``_runtime``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from ._encode import encode_arguments, encode_function
from ._runtime import __version__
from ._runtime.errors import EncodeError, EnvrunnerError

if TYPE_CHECKING:
    from ._envkey import Resolved
    from ._manifest import EnvSpec
    from ._options import Options

__all__ = ["FORMAT", "MAGIC", "SavedCall", "check_entry", "entry_of", "read_saved", "save_call"]

#: The saved-call format this envrunner writes and the newest it reads.
FORMAT = 1
MAGIC = b"#envrunner-call "


@dataclass(frozen=True)
class SavedCall:
    """One call saved to a file: all that ``envrunner run`` needs to run it."""

    path: Path
    task: str  # module.qualname, for messages
    env: str
    entry: dict[str, Any]  # the environment's manifest entry, as ``entry_of`` makes it
    key: str | None  # its build key when saved (None: an interpreter used as it is)
    manifest: str  # the manifest it came from
    code: bytes  # the function, encoded for the environment's Python
    body: bytes  # the arguments [args, kwargs], encoded
    frames: list[bytes] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # the saving process's project folders
    timeout: float | None = None
    retries: int = 0
    created: str = ""
    saved_by: str = ""  # envrunner version

    @property
    def result_path(self) -> Path:
        return self.path.with_name(self.path.name + ".result")

    @property
    def outcome_path(self) -> Path:
        return self.path.with_name(self.path.name + ".outcome.json")


def entry_of(spec: EnvSpec) -> dict[str, Any]:
    """What of an environment's manifest entry decides what it holds, comparable across
    machines: its ``python:`` as written, requirements, the contents of requirements files,
    installer options (not its folder, not ``env:`` values, which may hold secrets)."""
    return {
        "python": spec.python,
        "requirements": sorted({" ".join(r.split()) for r in spec.requirements}),
        "requirement_files": [
            hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.exists() else f"missing {p}"
            for p in spec.requirement_files
        ],
        "index_url": spec.pip.index_url,
        "extra_index_urls": list(spec.pip.extra_index_urls),
        "pre": spec.pip.pre,
        "system_site_packages": spec.system_site_packages,
        "installer": spec.installer,
    }


def save_call(
    path: str | os.PathLike[str],
    fn: Callable[..., Any],
    options: Options,
    resolved: Resolved,
    manifest: Path,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Path:
    """Write a call of ``fn`` to ``path`` (atomically); return the path.

    Raises:
        EncodeError: The function or an argument cannot be saved (the message names it); a
            ``Ref`` among the arguments (it lives in one worker, which a later run has not); a
            future among them (a saved call has no call to wait for).
        ValueError: The task keeps its results (``keep=True``): a result file needs the value.
        EnvrunnerError: The file cannot be written (the message names it); missing folders
            on its path are made.
    """
    from ._process import caller_project_paths

    spec = resolved.spec
    env = spec.name
    if options.keep:
        raise ValueError(
            "a task with keep=True cannot be saved: its result would stay in a worker that is "
            "gone when the run ends; save task.options(keep=False) instead"
        )
    version = resolved.interpreter.version
    same = tuple(version[:2]) == tuple(sys.version_info[:2])
    code, name = encode_function(fn, same, env, version, True)
    body, frames, encoder = encode_arguments(fn, name, env, args, kwargs, same, None, 0)
    if encoder.refs:
        raise EncodeError(
            f"the arguments of {name} hold {encoder.refs[0]!r}: an object kept in a worker "
            "cannot be saved (the worker is gone when the call runs); pass ref.fetch() instead",
            what="a Ref",
        )
    if encoder.futures:
        raise EncodeError(
            f"the arguments of {name} hold a future ({encoder.futures[0]!r}): a saved call runs "
            "alone, with no call to wait for; pass future.result() instead",
            what="a future",
        )
    header = {
        "format": FORMAT,
        "envrunner": __version__,
        "task": name.removesuffix("()"),
        "env": env,
        "key": resolved.key,
        "manifest": str(manifest),
        "entry": entry_of(spec),
        "timeout": options.timeout,
        "retries": options.retries,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "paths": caller_project_paths(),
    }
    blob = msgpack.packb(
        {"code": code, "body": body, "frames": [bytes(f) for f in frames]}, use_bin_type=True
    )
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # ("calls/x.call": calls/ is made)
    except OSError as exc:
        raise _unwritable(name, target, exc) from exc
    try:
        temporary.write_bytes(MAGIC + json.dumps(header).encode() + b"\n" + blob)
        os.replace(temporary, target)
    except OSError as exc:
        raise _unwritable(name, target, exc) from exc
    finally:
        temporary.unlink(missing_ok=True)
    return target


def _unwritable(name: str, target: Path, exc: OSError) -> EnvrunnerError:
    return EnvrunnerError(
        f"cannot save the call of {name} to {target}: {exc.strerror or exc} "
        f"({exc.filename or target}); save it to a folder you can write to"
    )


def read_saved(path: str | os.PathLike[str]) -> SavedCall:
    """Read a saved call.

    Raises:
        EnvrunnerError: The file is missing, not a saved call, damaged, or from a newer format.
    """
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise EnvrunnerError(f"{source}: cannot read it ({exc.strerror})") from None
    if not data.startswith(MAGIC):
        raise EnvrunnerError(
            f"{source} is not a saved call (it does not start with {MAGIC.decode().strip()!r}): "
            "make one with task.save(path, *args) (docs/workflows.md)"
        )
    line, _, blob = data[len(MAGIC) :].partition(b"\n")
    try:
        header = json.loads(line)
        found = int(header["format"])
    except (ValueError, KeyError, TypeError) as exc:
        raise EnvrunnerError(
            f"{source}: its header line is damaged ({exc}): save it again"
        ) from None
    if found > FORMAT:
        raise EnvrunnerError(
            f"{source} was saved by envrunner {header.get('envrunner', '?')} in saved-call format "
            f"{found}; this envrunner ({__version__}) reads format {FORMAT} and older: upgrade "
            "envrunner where you run it (pip install -U envrunner-py)"
        )
    try:
        parts = msgpack.unpackb(blob, raw=False)
        return SavedCall(
            path=source,
            task=str(header["task"]),
            env=str(header["env"]),
            entry=dict(header["entry"]),
            key=header["key"],
            manifest=str(header["manifest"]),
            code=parts["code"],
            body=parts["body"],
            frames=list(parts["frames"]),
            paths=list(header.get("paths", [])),
            timeout=header.get("timeout"),
            retries=int(header.get("retries", 0)),
            created=str(header.get("created", "")),
            saved_by=str(header.get("envrunner", "")),
        )
    except (ValueError, KeyError, TypeError, msgpack.ExtraData) as exc:
        raise EnvrunnerError(
            f"{source}: the call in it is damaged ({type(exc).__name__}: {exc}): save it again"
        ) from None


def check_entry(saved: SavedCall, spec: EnvSpec, manifest: Path) -> None:
    """Refuse to run a saved call in an environment whose entry changed since it was saved.

    Raises:
        EnvrunnerError: Naming each setting that differs, its saved and current value, and the
            ways out.
    """
    now = entry_of(spec)
    changed = [
        f"{name}: saved {saved.entry.get(name)!r}, now {now.get(name)!r}"
        for name in sorted(set(now) | set(saved.entry))
        if now.get(name) != saved.entry.get(name)
    ]
    if changed:
        raise EnvrunnerError(
            f"{saved.path}: environment {saved.env!r} of {manifest} ({spec.location}) changed "
            f"since the call was saved ({saved.created}, from {saved.manifest}): "
            + "; ".join(changed)
            + ". Restore the entry as it was, save the call again, or run it in the "
            "environment as it is now with --allow-changed"
        )
