"""Building an environment: beside the current build, swapped in only when complete.

May import: the standard library, filelock, virtualenv (for its embedded pip), and
``envrunner._home``, ``_build_steps``, ``_envkey``, ``_interpreters``, ``_locks``, ``_progress``,
``_records``, ``_runtime``.

A build::

    stale or missing lock? report what differs (an error under --locked / ENVRUNNER_LOCKED=1)
    take envs/<key>.lock  ──►  record there? done (another process built it)
                          ──►  stop what an interrupted build left running, remove its folders
                          ──►  create the virtualenv in envs/<key>.b<time>  (uv venv | virtualenv)
                          ──►  install: the lock, hash-checked, when it is fresh; else the
                               requirements + runtime (uv pip | pip), bytecode compiled
                          ──►  list what got installed; write envrunner.json there
                          ──►  point the symlink envs/<key> at it (one rename: atomic)
                          ──►  move the build it replaced to trash/, removed there in the
                               background (``rm -rf`` in a session of its own)

Until the rename, envs/<key> still points at the previous build (``build --force``): a failure
or Ctrl-C removes the new folder only. A failed build's log is kept under
``$ENVRUNNER_HOME/logs`` and the error quotes the installer's last lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import _home
from ._build_steps import Steps, find_uv, installer_env, kill_group, redact, write_atomic
from ._envkey import BUILD_FORMAT, Resolved
from ._interpreters import Interpreter
from ._locks import index_options, locked_names, locked_required
from ._progress import Progress, QuietProgress
from ._records import RECORD_NAME, make_record, packages, read_record, remember
from ._runtime import RUNTIME_DISTRIBUTIONS, RUNTIME_REQUIREMENTS
from ._runtime.errors import BuildError, EnvrunnerError

__all__ = ["build", "build_folders", "overlay"]


def build(
    resolved: Resolved,
    *,
    force: bool = False,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    manifest_path: Path | None = None,
) -> dict[str, Any]:
    """Build the environment unless a complete build of its key exists; return its record.

    Safe against other processes (a file lock per key: one builds, the others wait and reuse)
    and against interruption (the new build is swapped in only when complete).

    Raises:
        BuildError: The build failed or was cancelled (the previous build, if any, is kept), or
            ``ENVRUNNER_LOCKED`` is set and the lock is missing or stale.
    """
    progress = progress or QuietProgress()
    spec = resolved.spec
    if resolved.key is None:
        raise BuildError(spec.name, "build", "an environment used as it is cannot be built")
    _check_lock(resolved, progress)
    if not force:
        record = read_record(resolved.path)
        if record is not None and _interpreter_gone(resolved, progress):
            record, force = None, True  # built, but broken: built again
        if record is not None:
            if manifest_path is not None:
                remember(resolved, manifest_path)
            return record
    import filelock  # only now: a cache hit does without it (8 ms of import)

    envs = resolved.path.parent
    _home.make_dir(envs)
    lock = filelock.FileLock(str(resolved.lock_path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        progress.step(spec.name, "waiting for another process that is building it")
        while True:
            try:
                lock.acquire(timeout=0.5)
                break
            except filelock.Timeout:
                if cancel is not None and cancel.is_set():
                    raise BuildError(spec.name, "wait", "cancelled (the runner shut down)")
    try:
        if not force:
            record = read_record(resolved.path)
            if record is not None:  # built while we waited
                if manifest_path is not None:
                    remember(resolved, manifest_path)
                progress.done(spec.name, "built by another process")
                return record
        record = _build_locked(resolved, progress, cancel, manifest_path)
    finally:
        lock.release()
    if manifest_path is not None:
        remember(resolved, manifest_path)
    return record


def _interpreter_gone(resolved: Resolved, progress: Progress) -> bool:
    """Whether a complete build's interpreter is gone (deleted, or the Python it links to was
    removed): such a build is broken, and is built again (saying so)."""
    python = resolved.python
    if os.path.exists(python):
        return False
    progress.step(
        resolved.spec.name,
        f"its interpreter {python} is gone (deleted, or the Python it was made from was "
        "removed): building it again",
    )
    return True


def _check_lock(resolved: Resolved, progress: Progress) -> None:
    """Refuse a missing or stale lock under ``--locked``; otherwise report a stale one."""
    lock, name = resolved.lock, resolved.spec.name
    if lock is None or lock.used:
        return
    if locked_required():
        raise BuildError(
            name,
            "lock",
            lock.problem(name),
            hint=f"run envrunner lock {name} and commit {lock.path.name}, or build without "
            "--locked (ENVRUNNER_LOCKED unset) to resolve from the manifest",
        )
    if lock.status == "stale":
        progress.done(
            name,
            f"{lock.problem(name)}: building from the manifest instead "
            f"(run envrunner lock {name} to update the lock)",
        )


def build_folders(envs: Path, key: str) -> list[Path]:
    """The build folders of ``key`` in ``envs`` (the current one and any left behind)."""
    return sorted(p for p in envs.glob(f"{key}.b*") if p.is_dir() and not p.is_symlink())


def _current(link: Path) -> Path | None:
    """The folder ``envs/<key>`` stands for now: its symlink's target, or itself (older builds)."""
    if link.is_symlink():
        target = link.parent / os.readlink(link)
        return target if target.is_dir() else None
    return link if link.is_dir() else None


def _swap(link: Path, target: Path) -> Path | None:
    """Point ``link`` at ``target`` in one rename; returns the folder it stood for before."""
    previous = _current(link)
    temporary = link.with_name(f".{link.name}.swap-{time.time_ns():x}")
    os.symlink(target.name, temporary)
    try:
        os.replace(temporary, link)
    except IsADirectoryError:  # a real folder, from before builds were swapped in
        aside = link.with_name(f"{link.name}.b-old-{time.time_ns():x}")
        os.rename(link, aside)
        os.replace(temporary, link)
        previous = aside
    return previous if previous != target else None


def _build_locked(
    resolved: Resolved,
    progress: Progress,
    cancel: threading.Event | None,
    manifest_path: Path | None,
) -> dict[str, Any]:
    spec = resolved.spec
    link = resolved.path
    assert resolved.key is not None
    marker = link.with_name(link.name + ".building")
    _stop_orphans(marker)  # an interrupted build's installer may still be writing in there
    current = _current(link) if read_record(link) is not None else None
    if current is None and (link.is_symlink() or link.exists()):
        _remove(link)  # a partial build of an older envrunner, or a dangling link
    for folder in build_folders(link.parent, resolved.key):
        if folder != current:
            shutil.rmtree(folder, ignore_errors=True)  # left by a killed build
    target = link.with_name(f"{resolved.key}.b{time.time_ns():x}")
    logs = _home.logs_dir()
    _home.make_dir(logs)
    log_path = logs / f"{spec.name}-{resolved.key}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    steps = Steps(spec.name, log_path, progress, cancel, spec.build_timeout, marker)
    started = time.monotonic()
    uv = resolved.installer == "uv"
    cwd = manifest_path.parent if manifest_path else Path.cwd()
    kept = " (the previous build is still in use)" if current is not None else ""
    try:
        steps.note(f"environment {spec.name!r}, key {resolved.key}, into {target}")
        steps.note(redact(json.dumps(resolved.material, sort_keys=True)))
        _create(resolved, target, steps, uv, cwd)
        _install(resolved, target, steps, uv, cwd)
        installed = packages(spec.name, target / "bin" / "python")
        record = make_record(resolved, installed, time.monotonic() - started, manifest_path, target)
        write_atomic(target / RECORD_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")
        replaced = _swap(link, target)
    except BaseException as exc:
        steps.close()
        marker.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):  # the caller says "interrupted": no "failed"
            progress.done(spec.name, f"build stopped{kept or ' (nothing was left behind)'}")
            raise
        progress.done(spec.name, f"build failed{kept} (log: {log_path})")  # ends a status line
        if isinstance(exc, BuildError):
            raise BuildError(
                exc.env, exc.step, exc.reason, str(log_path), list(steps.tail), exc.hint
            ) from None
        if isinstance(exc, OSError):
            raise BuildError(
                spec.name, "build", f"{type(exc).__name__}: {exc}", str(log_path), list(steps.tail)
            ) from exc
        raise
    steps.close()
    marker.unlink(missing_ok=True)
    log_path.unlink(missing_ok=True)
    if replaced is not None:
        _discard(replaced)
    source = f", from {resolved.lock.path.name}" if resolved.lock and resolved.lock.used else ""
    progress.done(
        spec.name,
        f"built in {record['build_seconds']:.1f}s ({len(installed)} packages{source}) at {link}",
    )
    return record


_TRASH_KEPT_NS = 3600 * 10**9  # a trash entry this old was left by a removal that died


def _discard(folder: Path) -> None:
    """Remove a replaced build without making the caller wait for the disk (#14).

    The folder leaves ``envs/`` at once, renamed into ``$ENVRUNNER_HOME/trash``, and is removed
    there by ``rm -rf`` in a session of its own, which outlives a CLI that exits first (a
    removal took 8 to 140 ms of a 0.4 s warm build here). Where either step cannot be taken, it
    is removed here; entries an hour old, left by a removal that was killed, go with the next.
    """
    trash = _home.home() / "trash"
    now = time.time_ns()
    try:
        _home.make_dir(trash)
        for leftover in trash.iterdir():
            stamp = leftover.name.rpartition("-")[2]
            hexadecimal = bool(stamp) and all(c in "0123456789abcdef" for c in stamp)
            if hexadecimal and now - int(stamp, 16) > _TRASH_KEPT_NS:
                shutil.rmtree(leftover, ignore_errors=True)
        aside = trash / f"{folder.name}-{now:x}"
        os.rename(folder, aside)
    except (OSError, EnvrunnerError):  # another file system, or no home of ours: remove it here
        shutil.rmtree(folder, ignore_errors=True)
        return
    try:
        subprocess.run(
            ["sh", "-c", 'rm -rf -- "$1" </dev/null >/dev/null 2>&1 &', "sh", str(aside)],
            check=True,
            timeout=30,
            start_new_session=True,
        )
    except (OSError, subprocess.SubprocessError):
        shutil.rmtree(aside, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _stop_orphans(marker: Path) -> None:
    """Stop the installer an interrupted build left running (its group is in ``marker``)."""
    try:
        pgid = int(marker.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    kill_group(pgid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            break
        time.sleep(0.05)
    marker.unlink(missing_ok=True)


def _create(resolved: Resolved, folder: Path, steps: Steps, uv: bool, cwd: Path) -> None:
    spec = resolved.spec
    interpreter = resolved.interpreter
    what = f"creating the virtualenv (Python {'.'.join(map(str, interpreter.version))})"
    if uv:
        uv_path = find_uv()
        assert uv_path is not None
        argv = [str(uv_path), "venv", "--python", str(interpreter.path), "--no-project"]
        argv += ["--no-config", "--quiet"]
    else:
        argv = [sys.executable, "-m", "virtualenv", "--python", str(interpreter.path)]
        argv += ["--no-setuptools", "--no-wheel", "--no-periodic-update", "--quiet"]
    if spec.system_site_packages:
        argv.append("--system-site-packages")
    argv.append(str(folder))
    steps.run(what, argv, installer_env(uv), cwd, tool="uv" if uv else "virtualenv")


def _has_hashes(files: Iterable[Path]) -> bool:
    return any("--hash" in path.read_text(errors="replace") for path in files)


def _install(resolved: Resolved, folder: Path, steps: Steps, uv: bool, cwd: Path) -> None:
    spec = resolved.spec
    python = str(folder / "bin" / "python")
    tool = "uv" if uv else "pip"
    if uv:
        uv_path = find_uv()
        assert uv_path is not None
        base = [str(uv_path), "pip", "install", "--python", python, "--compile-bytecode"]
        base.append("--no-config")
    else:
        base = [python, "-m", "pip", "install", "--compile", "--no-input"]
    environ = installer_env(uv)
    lock = resolved.lock
    if lock is not None and lock.used:
        if lock.path.suffix == ".toml" and not uv:
            raise BuildError(
                spec.name,
                "install",
                f"{lock.path.name} is a pylock.toml, which pip cannot install from",
                hint="install uv (pip install uv) and leave installer: auto, or lock to a "
                "requirements file with hashes (lock: NAME.lock.txt)",
            )
        argv = [*base, "--require-hashes"]
        if lock.path.suffix != ".toml":
            argv += ["--no-deps", *index_options(spec, uv)]
        steps.run(
            f"installing {lock.path.name} (hash-checked, {tool})",
            [*argv, "-r", str(lock.path)],
            environ,
            cwd,
            tool=tool,
        )
        runtime_names = {name.lower() for name in RUNTIME_DISTRIBUTIONS}
        if not runtime_names <= locked_names(lock.path):
            steps.note(f"{lock.path.name} does not pin the worker runtime: installing it apart")
            _runtime_beside(resolved, folder, base, steps, environ, cwd, tool)
        return
    base += index_options(spec, uv)
    user = list(spec.requirements)
    if spec.requirements_file is not None:
        user += ["-r", str(spec.requirements_file)]
    runtime = list(RUNTIME_REQUIREMENTS)
    count = len(spec.requirements) + (1 if spec.requirements_file else 0)
    if spec.requirements_file is not None and _has_hashes(spec.requirement_files):
        # Hash-checking mode wants a hash for everything: our runtime goes in a second step,
        # held to exactly what the first one installed.
        steps.run(
            f"installing {spec.requirements_file.name} (hash-checked)",
            base + user,
            environ,
            cwd,
            tool=tool,
        )
        _runtime_beside(resolved, folder, base, steps, environ, cwd, tool)
        return
    if count:
        label = f"installing {count} requirement{'s' if count != 1 else ''} and the worker runtime"
    else:
        label = "installing the worker runtime"
    steps.run(f"{label} ({tool})", base + user + runtime, environ, cwd, tool=tool)


def _runtime_beside(
    resolved: Resolved,
    folder: Path,
    base: list[str],
    steps: Steps,
    environ: dict[str, str],
    cwd: Path,
    tool: str,
) -> None:
    """Install the worker runtime held to exactly what the environment already has."""
    constraints = folder / ".envrunner-constraints.txt"
    installed = packages(resolved.spec.name, folder / "bin" / "python")
    constraints.write_text("".join(f"{name}=={version}\n" for name, version, _ in installed))
    argv = [*base, "-c", str(constraints), *RUNTIME_REQUIREMENTS]
    steps.run("installing the worker runtime", argv, environ, cwd, tool=tool)
    constraints.unlink()


# --------------------------------------------------------------------------- overlays


def overlay(interpreter: Interpreter, progress: Progress | None = None) -> Path:
    """The worker runtime installed apart, for an interpreter used as it is.

    It goes at the end of the worker's import path, so packages the interpreter has win.
    """
    import filelock

    material = {
        "format": BUILD_FORMAT,
        "python": [interpreter.full_version, interpreter.platform],
        "runtime": list(RUNTIME_REQUIREMENTS),
    }
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]
    folder = _home.home() / "overlays" / key
    marker = folder / ".complete"
    if marker.exists():
        return folder
    _home.make_dir(folder.parent)
    with filelock.FileLock(str(folder) + ".lock"):
        if marker.exists():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        uv = find_uv()
        if uv is not None:
            argv = [str(uv), "pip", "install", "--no-config", "--python", str(interpreter.path)]
            argv += ["--target", str(folder), "--compile-bytecode", *RUNTIME_REQUIREMENTS]
        else:
            from virtualenv.seed.wheels.embed import get_embed_wheel

            wheel = get_embed_wheel("pip", interpreter.minor)
            if wheel is None:
                raise BuildError(
                    "runtime",
                    "install the worker runtime",
                    f"virtualenv has no pip for Python {interpreter.minor}; install uv",
                )
            argv = [str(interpreter.path), f"{wheel.path}/pip", "install", "--target"]
            argv += [str(folder), "--compile", "--no-input", *RUNTIME_REQUIREMENTS]
        result = subprocess.run(
            argv, capture_output=True, text=True, env=installer_env(uv is not None), check=False
        )
        if result.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise BuildError(
                "runtime",
                "install the worker runtime",
                f"installing {', '.join(RUNTIME_REQUIREMENTS)} for {interpreter.describe()} failed",
                tail=(result.stdout + result.stderr).strip().splitlines()[-25:],
            )
        marker.write_text("")
    return folder
