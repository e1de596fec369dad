"""Lock files: an environment's exact pins with hashes, written beside the manifest.

May import: the standard library and ``envrunner._build_steps``, ``_home``, ``_interpreters``,
``_manifest``, ``_progress``, ``_requirements``, ``_runtime``.

::

    envrunner lock NAME ──► uv pip compile (requirements + worker runtime, for the environment's
                            own interpreter and platform, hashes on)
                        ──► pylock.NAME.toml (PEP 751; installer uv)
                            NAME.lock.txt    (pip requirements with --hash; installer pip)
                            or the file the manifest's ``lock:`` names
    resolve (every build) ──► read the lock's first lines: the inputs it was made from
                          ──► fresh: the build installs exactly the lock, hashes checked, and the
                                     lock's digest joins the content key
                              stale: what differs is reported; with --locked / ENVRUNNER_LOCKED=1
                                     the build fails, else it resolves from the manifest
                              given: a lock the manifest points at that envrunner did not write
                                     (used as it is)

A lock is made for one interpreter (implementation, minor version, platform): a lock made on
Linux for Python 3.12 is stale for macOS or Python 3.13, and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _home
from ._build_steps import Steps, find_uv, redact, write_atomic
from ._interpreters import Interpreter
from ._manifest import EnvSpec
from ._progress import Progress, QuietProgress
from ._requirements import canonical, parse
from ._runtime import RUNTIME_REQUIREMENTS
from ._runtime.errors import BuildError

__all__ = [
    "LOCKED_VARIABLE",
    "LockState",
    "check",
    "index_options",
    "lock_path",
    "locked_names",
    "locked_required",
    "write_lock",
]

#: Set to 1 (CI) to make a missing or stale lock an error instead of a fresh resolve.
LOCKED_VARIABLE = "ENVRUNNER_LOCKED"
_INPUTS = "# envrunner-inputs: "
_TOML_NAME = re.compile(r'^name\s*=\s*"([^"]+)"', re.MULTILINE)


@dataclass(frozen=True)
class LockState:
    """An environment's lock file and whether a build may install from it.

    Attributes:
        path: The lock file (it may not exist).
        status: ``fresh`` (made from what the manifest says now), ``stale`` (made from something
            else), ``missing``, or ``given`` (named by ``lock:``, not written by envrunner: used
            as it is).
        differences: For a stale lock, what differs, one line each.
        digest: The lock's sha256 when it exists (part of the content key when it is used).
    """

    path: Path
    status: str
    differences: tuple[str, ...] = ()
    digest: str = ""

    @property
    def used(self) -> bool:
        """Whether a build installs from this lock."""
        return self.status in ("fresh", "given")

    def problem(self, env: str) -> str:
        """One sentence: why this lock cannot be used."""
        if self.status == "missing":
            return f"no lock file: {_shown(self.path)} does not exist"
        changed = "; ".join(self.differences)
        return f"{_shown(self.path)} is out of date with the manifest: {changed}"


def _shown(path: Path) -> str:
    try:
        relative = os.path.relpath(path)
    except (OSError, ValueError):
        return str(path)
    return str(path) if relative.startswith("..") else relative


def locked_required() -> bool:
    """Whether ``--locked`` / ``ENVRUNNER_LOCKED`` asks for builds from fresh locks only."""
    return os.environ.get(LOCKED_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def lock_path(spec: EnvSpec, installer: str) -> Path:
    """Where ``spec``'s lock lives: ``lock:`` if the manifest names one, else beside it."""
    if spec.lock is not None:
        return spec.lock
    folder = Path(spec.location.file).parent
    if installer == "pip":
        return folder / f"{spec.name}.lock.txt"
    return folder / f"pylock.{spec.name}.toml"


def index_options(spec: EnvSpec, uv: bool) -> list[str]:
    """The installer options that change where packages come from."""
    options: list[str] = []
    if spec.pip.index_url:
        options += ["--index-url", spec.pip.index_url]
    for url in spec.pip.extra_index_urls:
        options += ["--extra-index-url", url]
    for link in spec.pip.find_links:
        options += ["--find-links", link]
    if spec.pip.pre:
        options += ["--prerelease", "allow"] if uv else ["--pre"]
    return options


def _relative(text: str, folder: Path) -> str:
    if "://" in text:
        return redact(text)
    try:
        return os.path.relpath(text, folder)
    except ValueError:
        return text


def inputs(spec: EnvSpec, interpreter: Interpreter, installer: str) -> dict[str, Any]:
    """What a lock of ``spec`` is made from: the same on every machine for the same manifest."""
    folder = Path(spec.location.file).parent
    files = {
        _relative(str(path), folder): hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        for path in spec.requirement_files
        if path.is_file()
    }
    return {
        "requirements": sorted({" ".join(r.split()) for r in spec.requirements}),
        "requirement_files": files,
        "index": [_relative(option, folder) for option in index_options(spec, True)],
        "python": f"{interpreter.implementation} {interpreter.version[0]}.{interpreter.version[1]}",
        "platform": interpreter.platform,
        "installer": installer,
        "runtime": list(RUNTIME_REQUIREMENTS),
    }


def _read_inputs(text: str) -> dict[str, Any] | None:
    for line in text.splitlines()[:5]:
        if line.startswith(_INPUTS):
            try:
                found = json.loads(line[len(_INPUTS) :])
            except ValueError:
                return None
            return found if isinstance(found, dict) else None
    return None


def differences(locked: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What changed between the inputs a lock was made from and the manifest's, one line each."""
    out: list[str] = []
    for key in sorted(set(locked) | set(now)):
        old, new = locked.get(key), now.get(key)
        if old == new:
            continue
        label = key.replace("_", " ")
        if isinstance(old, list) and isinstance(new, list):
            added = [item for item in new if item not in old]
            removed = [item for item in old if item not in new]
            parts = [f"added {', '.join(map(repr, added))}"] if added else []
            parts += [f"removed {', '.join(map(repr, removed))}"] if removed else []
            out.append(f"{label}: {'; '.join(parts) or 'reordered'}")
        elif isinstance(old, dict) and isinstance(new, dict):
            changed = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
            out.append(f"{label}: {', '.join(changed)} changed")
        else:
            out.append(f"{label}: locked for {old!r}, the manifest now gives {new!r}")
    return out


def check(spec: EnvSpec, interpreter: Interpreter, installer: str) -> LockState:
    """The state of ``spec``'s lock (reads its first lines only: cheap on every resolve)."""
    path = lock_path(spec, installer)
    try:
        data = path.read_bytes()
    except OSError:
        return LockState(path, "missing")
    digest = hashlib.sha256(data).hexdigest()
    locked = _read_inputs(data[:8192].decode("utf-8", "replace"))
    if locked is None:
        # Not written by envrunner lock: the user's own lock, used as it is when named by lock:.
        if spec.lock is not None:
            return LockState(path, "given", (), digest)
        return LockState(path, "stale", ("it was not written by envrunner lock",), digest)
    found = differences(locked, inputs(spec, interpreter, installer))
    return LockState(path, "stale" if found else "fresh", tuple(found), digest)


def locked_names(path: Path) -> set[str]:
    """The canonical names of the distributions a lock file pins."""
    text = path.read_text(errors="replace")
    if path.suffix == ".toml":
        return {canonical(name) for name in _TOML_NAME.findall(text)}
    found = set()
    for line in text.splitlines():
        requirement = parse(line)
        if requirement is not None:
            found.add(canonical(requirement.name))
    return found


def write_lock(
    spec: EnvSpec,
    interpreter: Interpreter,
    installer: str,
    *,
    upgrade: bool = False,
    upgrade_packages: tuple[str, ...] = (),
    progress: Progress | None = None,
) -> tuple[Path, int]:
    """Resolve ``spec`` with uv and write its lock; returns the file and how many it pins.

    The existing lock's pins are kept where the manifest still allows them, unless ``upgrade``
    (everything) or ``upgrade_packages`` (those) ask for newer ones.

    Raises:
        BuildError: uv is missing, or the requirements do not resolve.
    """
    progress = progress or QuietProgress()
    uv = find_uv()
    if uv is None:
        raise BuildError(
            spec.name,
            "lock",
            "envrunner lock resolves with uv, which is not installed",
            hint="pip install uv (environments built with pip install from the lock all the same)",
        )
    path = lock_path(spec, installer)
    toml = path.suffix == ".toml"
    folder = Path(spec.location.file).parent
    logs = _home.logs_dir()
    _home.make_dir(logs)
    log_path = logs / f"lock-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    steps = Steps(spec.name, log_path, progress, None, spec.build_timeout)
    with tempfile.TemporaryDirectory(prefix="envrunner-lock-") as scratch:
        source = Path(scratch) / "requirements.in"
        lines = list(spec.requirements)
        if spec.requirements_file is not None:
            lines.append(f"-r {spec.requirements_file}")
        source.write_text("\n".join([*lines, *RUNTIME_REQUIREMENTS]) + "\n")
        output = Path(scratch) / ("pylock.toml" if toml else "requirements.txt")
        if path.is_file():  # its pins are uv's preferences: only what must move moves
            shutil.copyfile(path, output)
        argv = [str(uv), "pip", "compile", str(source), "-o", str(output), "--no-config"]
        argv += ["--python", str(interpreter.path), "--quiet", "--no-header"]
        argv += ["--format", "pylock.toml"] if toml else ["--generate-hashes"]
        argv += index_options(spec, True)
        if upgrade:
            argv.append("--upgrade")
        for name in upgrade_packages:
            argv += ["--upgrade-package", name]
        from ._build_steps import installer_env

        try:
            steps.run(f"resolving for {path.name}", argv, installer_env(True), folder, tool="uv")
        except BuildError as exc:
            steps.close()
            raise BuildError(
                exc.env, exc.step, exc.reason, str(log_path), list(steps.tail), exc.hint
            ) from None
        steps.close()
        log_path.unlink(missing_ok=True)
        body = output.read_text()
    body = "".join(line + "\n" for line in _without_header(body.splitlines()))
    header = (
        f"# envrunner lock of environment {spec.name!r} ({Path(spec.location.file).name}), for "
        f"{interpreter.implementation} {interpreter.version[0]}.{interpreter.version[1]} on "
        f"{interpreter.platform}.\n# Made by `envrunner lock {spec.name}`; edit the manifest "
        "and run it again rather than editing this file.\n"
        f"{_INPUTS}{json.dumps(inputs(spec, interpreter, installer), sort_keys=True)}\n"
    )
    write_atomic(path, header + body)
    return path, len(locked_names(path))


def _without_header(lines: list[str]) -> list[str]:
    """The lines after any leading comments (uv's header, or our own from the last lock)."""
    for index, line in enumerate(lines):
        if not line.startswith("#"):
            return lines[index:]
    return []
