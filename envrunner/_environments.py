"""Built environments: content keys, safe builds, the cache and its records (DESIGN.md layer 3).

May import: the standard library, filelock, virtualenv (for its embedded pip), and
``envrunner._home``, ``_manifest``, ``_interpreters``, ``_progress``, ``_runtime``.

An environment is built once per *key*: a hash of everything that changes what gets installed
(the normalized requirements, the contents of requirements files, installer options, the
interpreter's full version, platform and location, the installer, the worker runtime's
requirements) and of nothing else (not the manifest's folder, not the order of keys, not the
environment's name, not its ``env:`` variables). Environments live in
``$ENVRUNNER_HOME/envs/<key>`` and are shared by every project that asks for the same thing.

A build::

    take envs/<key>.lock  ──►  record there? done (another process built it)
                          ──►  remove what an interrupted build left
                          ──►  create the virtualenv (uv venv | virtualenv)
                          ──►  install requirements + runtime (uv pip | pip), bytecode compiled
                          ──►  list what got installed
                          ──►  write envrunner.json LAST: it marks the build complete

A folder without ``envrunner.json`` is never used. A failed build is removed; its log is kept
under ``$ENVRUNNER_HOME/logs`` and the error quotes the installer's last lines.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _home
from ._interpreters import Interpreter, find_interpreter
from ._manifest import EnvSpec, Manifest
from ._progress import Progress, QuietProgress
from ._runtime import RUNTIME_DISTRIBUTIONS, RUNTIME_REQUIREMENTS
from ._runtime.errors import BuildError

__all__ = [
    "BUILD_FORMAT",
    "RECORD_NAME",
    "Resolved",
    "build",
    "find_uv",
    "garbage",
    "read_record",
    "redact",
    "resolve",
    "state",
]

#: Bump when what a built environment holds changes shape: every key changes with it.
BUILD_FORMAT = 1
RECORD_NAME = "envrunner.json"
TAIL_LINES = 25


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
    """

    spec: EnvSpec
    interpreter: Interpreter
    installer: str
    key: str | None
    path: Path
    material: dict[str, Any]

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
        return self.path.with_name(self.path.name + ".lock")


# --------------------------------------------------------------------------- resolving


def find_uv() -> Path | None:
    """The uv executable: ``$ENVRUNNER_UV``, on PATH, beside this Python, or the uv package's."""
    configured = os.environ.get("ENVRUNNER_UV")
    if configured:
        return Path(configured)
    found = shutil.which("uv")
    if found:
        return Path(found)
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found, unused-ignore]

        return Path(find_uv_bin())
    except Exception:
        return None


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


def key_material(spec: EnvSpec, interpreter: Interpreter, installer: str) -> dict[str, Any]:
    """Everything that changes what a build of ``spec`` produces, and nothing else."""
    requirements = sorted({" ".join(r.split()) for r in spec.requirements})
    return {
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
    material = key_material(spec, interpreter, installer)
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    key = digest[:20]
    return Resolved(spec, interpreter, installer, key, _home.envs_dir() / key, material)


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
        _write_atomic(index, resolved.key + "\n")
    except OSError:
        pass


# --------------------------------------------------------------------------- building


class _Steps:
    """Runs a build's commands, streaming their output to the log and the progress."""

    def __init__(
        self,
        env: str,
        log_path: Path,
        progress: Progress,
        cancel: threading.Event | None,
        timeout: float | None = None,
        marker: Path | None = None,
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.progress = progress
        self.cancel = cancel or threading.Event()
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.marker = marker
        self.timed_out = False
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def close(self) -> None:
        self.log.close()

    def note(self, text: str) -> None:
        self.log.write(f"# {text}\n")
        self.log.flush()

    def run(self, step: str, argv: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        self.progress.step(self.env, step)
        self.note(f"{step}: {redact(' '.join(argv))}")
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(cwd),
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,  # a group of its own: stopping it stops its children
            )
        except OSError as exc:
            raise BuildError(self.env, step, f"cannot run {argv[0]}: {exc}") from exc
        if self.marker is not None:  # so that a later build can stop it if we die
            self.marker.write_text(f"{process.pid}\n")
        threading.Thread(target=self._watch, args=(process,), daemon=True).start()
        assert process.stdout is not None
        with process.stdout:
            for raw in process.stdout:
                line = raw.rstrip("\n")
                self.log.write(raw if raw.endswith("\n") else raw + "\n")
                if line.strip():
                    self.tail.append(line)
                    self.progress.output(self.env, line)
        returncode = process.wait()
        self.log.flush()
        if self.timed_out:
            raise BuildError(
                self.env,
                step,
                f"timed out after {self.timeout:g}s and was stopped",
                hint="raise build_timeout: in the manifest if the build needs longer",
            )
        if self.cancel.is_set():
            raise BuildError(self.env, step, "cancelled (the runner shut down)")
        if returncode != 0:
            raise BuildError(self.env, step, f"{Path(argv[0]).name} exited with {returncode}")

    def _watch(self, process: subprocess.Popen[str]) -> None:
        """Stop the step's whole process group when the build is cancelled or out of time."""
        while process.poll() is None:
            wait = 0.2
            if self.deadline is not None:
                wait = max(0.0, min(wait, self.deadline - time.monotonic()))
            if self.cancel.wait(wait) or (
                self.deadline is not None and time.monotonic() >= self.deadline
            ):
                self.timed_out = not self.cancel.is_set()
                _kill_group(process.pid)
                return


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_orphans(marker: Path) -> None:
    """Stop the installer an interrupted build left running (its group is in ``marker``)."""
    try:
        pgid = int(marker.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    _kill_group(pgid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            break
        time.sleep(0.05)
    marker.unlink(missing_ok=True)


_CREDENTIALS = re.compile(r"(://[^/\s:@]+):[^/\s@]+@")


def redact(text: str) -> str:
    """Hide passwords in URLs (``https://user:secret@host`` -> ``https://user:***@host``)."""
    return _CREDENTIALS.sub(r"\1:***@", text)


def _write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    os.replace(temporary, path)


def _installer_env(uv: bool) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    environ.pop("VIRTUAL_ENV", None)
    if uv:
        environ["UV_PYTHON_DOWNLOADS"] = "never"
        environ.setdefault("UV_NO_PROGRESS", "1")
    else:
        environ["PIP_NO_INPUT"] = "1"
        environ["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return environ


def _has_hashes(files: Iterable[Path]) -> bool:
    return any("--hash" in path.read_text(errors="replace") for path in files)


def _index_options(spec: EnvSpec, uv: bool) -> list[str]:
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
    and against interruption (the record is written last; a folder without one is rebuilt).

    Raises:
        BuildError: The build failed or was cancelled; nothing half-built is left behind.
    """
    progress = progress or QuietProgress()
    spec = resolved.spec
    if resolved.key is None:
        raise BuildError(spec.name, "build", "an environment used as it is cannot be built")
    if not force:
        record = read_record(resolved.path)
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


def _build_locked(
    resolved: Resolved,
    progress: Progress,
    cancel: threading.Event | None,
    manifest_path: Path | None,
) -> dict[str, Any]:
    spec = resolved.spec
    path = resolved.path
    marker = path.with_name(path.name + ".building")
    _stop_orphans(marker)  # an interrupted build's installer may still be writing in there
    if path.exists():
        shutil.rmtree(path)
    logs = _home.logs_dir()
    _home.make_dir(logs)
    log_path = logs / f"{spec.name}-{resolved.key}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    steps = _Steps(spec.name, log_path, progress, cancel, spec.build_timeout, marker)
    started = time.monotonic()
    uv = resolved.installer == "uv"
    cwd = manifest_path.parent if manifest_path else Path.cwd()
    try:
        steps.note(f"environment {spec.name!r}, key {resolved.key}")
        steps.note(redact(json.dumps(resolved.material, sort_keys=True)))
        _create(resolved, steps, uv, cwd)
        _install(resolved, steps, uv, cwd)
        packages = _packages(resolved)
        record = _record(resolved, packages, time.monotonic() - started, manifest_path)
        _write_atomic(path / RECORD_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except BaseException as exc:
        steps.close()
        marker.unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
        progress.done(spec.name, f"build failed (log: {log_path})")  # ends a ticking status line
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
    progress.done(
        spec.name,
        f"built in {record['build_seconds']:.1f}s ({len(packages)} packages) at {path}",
    )
    return record


def _create(resolved: Resolved, steps: _Steps, uv: bool, cwd: Path) -> None:
    spec = resolved.spec
    interpreter = resolved.interpreter
    what = f"creating the virtualenv (Python {'.'.join(map(str, interpreter.version))})"
    if uv:
        uv_path = find_uv()
        assert uv_path is not None
        argv = [str(uv_path), "venv", "--python", str(interpreter.path), "--no-project"]
        argv += ["--no-config", "--quiet"]
        if spec.system_site_packages:
            argv.append("--system-site-packages")
        argv.append(str(resolved.path))
    else:
        argv = [sys.executable, "-m", "virtualenv", "--python", str(interpreter.path)]
        argv += ["--no-setuptools", "--no-wheel", "--no-periodic-update", "--quiet"]
        if spec.system_site_packages:
            argv.append("--system-site-packages")
        argv.append(str(resolved.path))
    steps.run(what, argv, _installer_env(uv), cwd)


def _install(resolved: Resolved, steps: _Steps, uv: bool, cwd: Path) -> None:
    spec = resolved.spec
    python = str(resolved.python)
    if uv:
        uv_path = find_uv()
        assert uv_path is not None
        base = [str(uv_path), "pip", "install", "--python", python, "--compile-bytecode"]
        base.append("--no-config")
    else:
        base = [python, "-m", "pip", "install", "--compile", "--no-input"]
    base += _index_options(spec, uv)
    user = list(spec.requirements)
    if spec.requirements_file is not None:
        user += ["-r", str(spec.requirements_file)]
    runtime = list(RUNTIME_REQUIREMENTS)
    environ = _installer_env(uv)
    count = len(spec.requirements) + (1 if spec.requirements_file else 0)
    if spec.requirements_file is not None and _has_hashes(spec.requirement_files):
        # Hash-checking mode wants a hash for everything: our runtime goes in a second step,
        # held to exactly what the first one installed.
        steps.run(
            f"installing {spec.requirements_file.name} (hash-checked)", base + user, environ, cwd
        )
        constraints = resolved.path / ".envrunner-constraints.txt"
        constraints.write_text(
            "".join(f"{name}=={version}\n" for name, version, _ in _packages(resolved))
        )
        steps.run(
            "installing the worker runtime", [*base, "-c", str(constraints), *runtime], environ, cwd
        )
        constraints.unlink()
        return
    label = f"installing {count} requirement{'s' if count != 1 else ''} and the worker runtime"
    steps.run(f"{label} ({'uv' if uv else 'pip'})", base + user + runtime, environ, cwd)


def _packages(resolved: Resolved) -> list[tuple[str, str, str]]:
    """What the new environment holds: (name, version, installer) of each distribution.

    Its Python runs once, to say where it looks for packages (it must start before the build
    counts as complete); the metadata there is read in this process, which is much faster
    than importing importlib.metadata in that Python.
    """
    check = subprocess.run(
        [str(resolved.python), "-I", "-c", "import sys; print('\\n'.join(sys.path))"],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        raise BuildError(
            resolved.spec.name,
            "check",
            f"the new environment's Python does not run: {check.stderr.strip()[-500:]}",
        )
    from importlib import metadata

    folders = [line for line in check.stdout.splitlines() if line and Path(line).is_dir()]
    found = set()
    for dist in metadata.distributions(path=folders):
        name = dist.metadata["Name"]
        if name:
            installer = dist.read_text("INSTALLER") or ""
            found.add((str(name), str(dist.version), installer))
    return sorted(found)


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _requested_names(spec: EnvSpec) -> set[str]:
    import re

    names = set()
    lines = list(spec.requirements)
    for path in spec.requirement_files:
        lines += path.read_text(errors="replace").splitlines()
    for line in lines:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if match and not line.lstrip().startswith("-"):
            names.add(_canonical(match.group(1)))
    return names


def _record(
    resolved: Resolved,
    packages: list[tuple[str, str, str]],
    seconds: float,
    manifest_path: Path | None,
) -> dict[str, Any]:
    spec = resolved.spec
    requested = _requested_names(spec)
    runtime = {_canonical(n) for n in RUNTIME_DISTRIBUTIONS}
    listed = []
    for name, version, installer in packages:
        canonical = _canonical(name)
        role = "requested" if canonical in requested else "dependency"
        if canonical in runtime and canonical not in requested:
            role = "runtime"
        elif canonical == "pip" and installer.strip() != "pip" and canonical not in requested:
            role = "installer"
        listed.append({"name": name, "version": version, "role": role})
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
        "packages": listed,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(seconds, 3),
        "size_bytes": _size(resolved.path),
    }


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


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
            argv, capture_output=True, text=True, env=_installer_env(uv is not None), check=False
        )
        if result.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise BuildError(
                "runtime",
                "install the worker runtime",
                f"installing {', '.join(RUNTIME_REQUIREMENTS)} for {interpreter.describe()} failed",
                tail=(result.stdout + result.stderr).strip().splitlines()[-TAIL_LINES:],
            )
        marker.write_text("")
    return folder


# --------------------------------------------------------------------------- garbage


def garbage(manifests: Sequence[Manifest]) -> list[tuple[Path, str]]:
    """What ``gc`` would remove: builds no manifest shown asks for, and abandoned partial builds.

    Returns:
        ``(path, reason)`` pairs.
    """
    import filelock

    wanted: set[str] = set()
    for manifest in manifests:
        for spec in manifest:
            try:
                resolved = resolve(spec)
            except Exception:
                continue
            if resolved.key:
                wanted.add(resolved.key)
    out: list[tuple[Path, str]] = []
    envs = _home.envs_dir()
    if not envs.is_dir():
        return out
    for path in sorted(envs.iterdir()):
        if not path.is_dir():
            continue
        if read_record(path) is None:
            lock = filelock.FileLock(str(path) + ".lock")
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                continue  # being built right now
            lock.release()
            out.append((path, "partial build (interrupted or failed)"))
        elif path.name not in wanted:
            record = read_record(path) or {}
            out.append((path, f"not asked for (was {record.get('name', '?')!r})"))
    return out
