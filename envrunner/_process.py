"""The worker-process interface, and its implementations: start a worker, watch it, kill it.

::

    broker ── Launcher.launch(LaunchRequest) ──► Process
              Process.poll() / pidfd readable      its exit status (negative: the signal)
              Process.kill()                       SIGKILL here; a SHUTDOWN for a worker elsewhere
              Process.stdout_fd / stderr_fd        where its output comes from (-1: nowhere here)
              Process.poll_every                   0: its pidfd wakes the broker; else poll it

The broker knows workers only through :class:`Process`: a local child (:class:`WorkerProcess`,
started by :class:`LocalLauncher`) and a worker that joined from another machine
(:class:`RemoteProcess`) are two implementations; launchers for other places are more.

May import: the standard library, ``envrunner._home``, ``envrunner._runtime``.

A worker is ``python -m envrunner.worker`` run by its environment's interpreter, in a new session
(so a Ctrl-C in the caller's terminal reaches the caller alone), with:

- its working folder set to the sealed runtime copy, so that ``envrunner`` on its import path is
  that copy and never a caller-side ``envrunner`` (the worker moves to the caller's folder once the
  broker welcomes it);
- the session key on an inherited Unix socket (one end of a socketpair) whose other end the
  caller keeps: when the caller dies, the socket closes and the worker exits (no orphans,
  whatever killed the caller). A socket, unlike a pipe, cannot be opened again through
  ``/proc/PID/fd/N``, so no other process can read the key from it;
- its own process group (its pid), which :meth:`WorkerProcess.kill` kills whole: processes a
  task started and left behind go with it (the worker also kills them when it exits);
- stdout and stderr as pipes that the broker reads line by line;
- the caller's environment variables minus what would leak the caller's Python into it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from . import _home
from ._runtime.errors import describe_exit

__all__ = [
    "LaunchRequest",
    "Launcher",
    "LocalLauncher",
    "Process",
    "RemoteProcess",
    "WorkerProcess",
    "caller_project_paths",
    "compile_runtime",
    "describe_exit",
    "runtime_root",
    "worker_environ",
]

#: Variables that would make a worker load the caller's Python instead of its own.
LEAKY_VARIABLES = (
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "__PYVENV_LAUNCHER__",
    "PYTHONSTARTUP",
)


@dataclass(frozen=True)
class LaunchRequest:
    """Everything needed to start one worker."""

    env: str
    python: Path
    address: str
    worker_id: str
    key: bytes
    environ: Mapping[str, str]
    runtime_root: Path
    append_paths: Sequence[str] = ()
    direct_address: str = ""
    max_message: int = -1
    started_path: str = ""  # a file the worker writes each call's id to as it starts it


class Process(Protocol):
    """A worker process, wherever it runs, as the broker sees it."""

    @property
    def pid(self) -> int: ...

    stdout_fd: int  # its output, read by the broker (-1: its output stays where it runs)
    stderr_fd: int
    pidfd: int  # readable when it exits (-1: none; the broker polls every ``poll_every`` s)

    @property
    def poll_every(self) -> float: ...

    @property
    def pending(self) -> bool:
        """It waits for resources elsewhere (a Slurm queue): no start deadline yet."""

    @property
    def reason(self) -> str:
        """Why it ended, in the words of what ran it ("": its exit status says it)."""

    def poll(self) -> int | None:
        """Its exit status once it has ended (negative: the signal that killed it)."""

    def kill(self) -> None:
        """Stop it now, whatever it is doing."""

    def told_to_go(self) -> None:
        """It was sent a SHUTDOWN (a process here exits and is reaped; one elsewhere is
        counted gone at once, since its exit is never seen here)."""

    def wait(self, timeout: float) -> int | None:
        """Wait for its end, at most ``timeout`` seconds; its status, or None."""

    def close(self) -> None:
        """Let go of what the caller holds of it (pipes, descriptors)."""


@dataclass
class WorkerProcess:
    """A started worker process and the caller's ends of its pipes."""

    popen: subprocess.Popen[bytes]
    key_fd: int
    stdout_fd: int
    stderr_fd: int
    pidfd: int = -1
    closed: bool = field(default=False)
    pending: ClassVar[bool] = False
    reason: ClassVar[str] = ""

    @classmethod
    def of(cls, popen: subprocess.Popen[bytes], key_fd: int) -> WorkerProcess:
        """A process just started with piped stdout and stderr: the caller keeps its own
        non-blocking copies of them (the Popen's streams closed) and, where Linux has one, a
        pidfd to see it exit."""
        assert popen.stdout is not None and popen.stderr is not None
        stdout_fd = os.dup(popen.stdout.fileno())
        stderr_fd = os.dup(popen.stderr.fileno())
        for stream in (popen.stdin, popen.stdout, popen.stderr):
            if stream is not None:
                stream.close()
        for fd in (stdout_fd, stderr_fd):
            os.set_blocking(fd, False)
        pidfd = -1
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(popen.pid)
            except OSError:
                pidfd = -1
        return cls(popen, key_fd, stdout_fd, stderr_fd, pidfd)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def poll_every(self) -> float:
        return 0.0 if self.pidfd >= 0 else 0.1

    def poll(self) -> int | None:
        """The exit status if the process has ended (negative: killed by that signal)."""
        return self.popen.poll()

    def kill(self) -> None:
        """SIGKILL the worker and its process group: what its tasks started goes with it.

        Native code cannot be interrupted any other way. The group is killed only while the
        worker is not yet reaped (its pid, the group's id, cannot have been reused then).
        """
        if self.popen.returncode is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.popen.kill()
            except ProcessLookupError:
                pass

    def told_to_go(self) -> None:
        pass  # it exits by itself, and its pidfd says so

    def terminate(self) -> None:
        if self.popen.returncode is None:
            try:
                self.popen.terminate()
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> int | None:
        """Wait for the exit, at most ``timeout`` seconds; its status, or None if still running."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Close the caller's ends of every pipe (the key socket's close tells the worker to go)."""
        if self.closed:
            return
        self.closed = True
        for fd in (self.key_fd, self.stdout_fd, self.stderr_fd, self.pidfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


class RemoteProcess:
    """A worker that joined from another machine: no process here, only what it says.

    It counts as exited once it is killed (for missing heartbeats, a deadline, or because it
    was told to go): there is no signal to send across machines, so ``kill`` sends a SHUTDOWN
    through ``on_kill`` instead, and the worker exits when it gets it or loses its caller.
    """

    stdout_fd = stderr_fd = pidfd = key_fd = -1
    poll_every: ClassVar[float] = 1.0
    pending: ClassVar[bool] = False
    reason: ClassVar[str] = ""

    def __init__(self, pid: int, host: str, on_kill: Callable[[], None] | None = None) -> None:
        self.pid = pid
        self.host = host
        self.returncode: int | None = None
        self.closed = False
        self.on_kill = on_kill

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            self.returncode = -9
            if self.on_kill is not None:
                self.on_kill()

    def told_to_go(self) -> None:
        if self.returncode is None:
            self.returncode = -9

    def terminate(self) -> None:
        self.kill()

    def wait(self, timeout: float) -> int | None:
        return self.returncode

    def close(self) -> None:
        self.closed = True


class Launcher(Protocol):
    """Starts workers; remote launchers are new classes, not new branches (``_launchers.py``:
    Slurm jobs, ``ssh``)."""

    @property
    def local(self) -> bool:
        """Its workers run on this machine: shared memory, a direct channel, the ipc socket.
        Else they connect to the broker's tcp door and get none of these."""

    def launch(self, request: LaunchRequest) -> Process: ...

    def close(self) -> None:
        """The runner is done: nothing it started may be left running."""


class LocalLauncher:
    """Starts workers as child processes on this machine."""

    local = True

    def close(self) -> None:
        pass

    def launch(self, request: LaunchRequest) -> WorkerProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        write_fd, read_fd = ours.detach(), theirs.detach()
        try:
            os.write(write_fd, request.key)
            popen = subprocess.Popen(
                [
                    str(request.python),
                    "-m",
                    "envrunner.worker",
                    "--connect",
                    request.address,
                    "--id",
                    request.worker_id,
                    "--key-fd",
                    str(read_fd),
                    "--env",
                    request.env,
                    *(arg for path in request.append_paths for arg in ("--append-path", path)),
                    *(("--direct", request.direct_address) if request.direct_address else ()),
                    *(("--started", request.started_path) if request.started_path else ()),
                    "--max-message",
                    str(request.max_message),
                ],
                cwd=str(request.runtime_root),
                env=dict(request.environ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(read_fd,),
                start_new_session=True,
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        return WorkerProcess.of(popen, write_fd)


def worker_environ(
    base: Mapping[str, str],
    bin_dir: Path | None,
    virtual_env: Path | None,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """A worker's environment variables.

    The caller's, minus what would leak the caller's Python into the worker (``PYTHONPATH``,
    ``PYTHONHOME``, ``VIRTUAL_ENV``, the caller's virtualenv on ``PATH``), plus the environment's
    own ``bin`` first on ``PATH`` and the manifest's ``env`` last.
    """
    environ = {k: v for k, v in base.items() if k not in LEAKY_VARIABLES}
    caller_bins = {str(Path(sys.prefix) / "bin")} if sys.prefix != sys.base_prefix else set()
    caller_venv = base.get("VIRTUAL_ENV")
    if caller_venv:
        caller_bins.add(str(Path(caller_venv) / "bin"))
    path = [p for p in environ.get("PATH", "").split(os.pathsep) if p and p not in caller_bins]
    if bin_dir is not None:
        path.insert(0, str(bin_dir))
    environ["PATH"] = os.pathsep.join(path)
    if virtual_env is not None:
        environ["VIRTUAL_ENV"] = str(virtual_env)
    environ.update(extra)
    return environ


def caller_project_paths() -> list[str]:
    """The caller's import path minus its Python's own folders: the user's project folders.

    These go on the worker's import path so that tasks defined in the user's modules import
    there; the caller's site-packages never do (they would leak the caller's packages).
    """
    import site
    import sysconfig

    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix) if p}
    excluded = set()
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            excluded.add(os.path.realpath(sysconfig.get_paths()[name]))
        except KeyError:
            pass
    try:
        excluded.update(os.path.realpath(p) for p in site.getsitepackages())
        excluded.add(os.path.realpath(site.getusersitepackages()))
    except AttributeError:
        pass
    out: list[str] = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if path in excluded or not os.path.isdir(path):
            continue
        if any(path == p or path.startswith(p + os.sep) for p in prefixes):
            continue
        if "site-packages" in Path(path).parts or "dist-packages" in Path(path).parts:
            continue
        if path not in out:
            out.append(path)
    cwd = os.path.realpath(os.getcwd())
    if cwd not in out:
        out.append(cwd)
    return out


# --------------------------------------------------------------------------- runtime copy

_RUNTIME_SOURCE = Path(__file__).parent / "_runtime"
_FACE = "face.py"


def _runtime_files() -> list[tuple[str, Path]]:
    """(path inside the copy, source file) for every file of the sealed runtime."""
    files = [("envrunner/__init__.py", _RUNTIME_SOURCE / _FACE)]
    files.append(("envrunner/worker.py", Path(__file__).parent / "worker.py"))
    for source in sorted(_RUNTIME_SOURCE.glob("*.py")):
        files.append((f"envrunner/_runtime/{source.name}", source))
    return files


def runtime_root() -> Path:
    """The sealed runtime copy that workers import ``envrunner`` from, made once per content."""
    files = _runtime_files()
    digest = hashlib.sha256()
    for name, source in files:
        digest.update(name.encode() + b"\0" + source.read_bytes() + b"\0")
    root = _home.home() / "runtime" / digest.hexdigest()[:16]
    if (root / ".complete").exists():
        return root
    _home.make_dir(root.parent)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root.parent))
    try:
        for name, source in files:
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        (staging / ".complete").write_text("")
        try:
            staging.rename(root)
        except OSError:  # another process made it first: theirs is as good
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def compile_runtime(root: Path, python: Path, cache_tag: str) -> None:
    """Compile the runtime copy's bytecode for one interpreter, once.

    Workers then start without compiling it, even where ``PYTHONDONTWRITEBYTECODE`` is set.
    """
    marker = root / f".compiled-{cache_tag}"
    if marker.exists():
        return
    subprocess.run(
        [str(python), "-I", "-m", "compileall", "-q", str(root / "envrunner")],
        capture_output=True,
        check=False,
    )
    marker.write_text("")
