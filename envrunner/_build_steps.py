"""Running an installer's commands for a build: watched, logged, stopped with their caller.

May import: the standard library, uv (its package, only to find its binary), and
``envrunner._progress``, ``envrunner._runtime``.

Each command runs under a tiny watcher process, in a process group of its own::

    caller ──(pipe: caller holds the write end)──► watcher ──► uv / pip ──► build backends
                                                       │
            the pipe reads end-of-file (the caller exited, even by kill -9)
                                                       └──► SIGKILL to the whole group

So an installer and the build backends it started never outlive the caller, whatever ended it,
and a cancelled or timed-out step stops its whole group at once.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ._progress import Progress
from ._runtime.errors import BuildError

__all__ = ["Steps", "find_uv", "installer_env", "kill_group", "redact", "write_atomic"]

TAIL_LINES = 25

# Runs the command in the watcher's own group; when the caller's end of the pipe closes, kills it.
# It imports nothing beyond built-in modules (a Python start is most of its cost): it forks the
# command and waits on the pipe and a pidfd of the child at once; where pidfds are missing, a
# thread blocks on the pipe instead.
_WATCHER = """\
import os, sys
fd = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(fd)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        sys.stderr.write("error: cannot run %s: %s\\n" % (sys.argv[2], exc))
        sys.stderr.flush()
    os._exit(127)
def done():
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    sys.exit(code if code >= 0 else 128 - code)
def closed():
    try:
        return not os.read(fd, 64)
    except OSError:
        return True
try:
    pidfd = os.pidfd_open(pid)
except (AttributeError, OSError):
    import threading
    def watch():
        while not closed():
            pass
        os.killpg(0, 9)
    threading.Thread(target=watch, daemon=True).start()
    done()
import select
poller = select.poll()
poller.register(fd, select.POLLIN)
poller.register(pidfd, select.POLLIN)
while True:
    for ready, _ in poller.poll():
        if ready == pidfd:
            done()
        if closed():
            os.killpg(0, 9)
"""

# "Building foo==1.0" (uv) and "Building wheel for foo (pyproject.toml)" (pip): a source build.
_SOURCE_BUILD = re.compile(r"^\s*Building (?:wheel for )?([A-Za-z0-9][A-Za-z0-9._-]*)")
_ERROR_LINE = re.compile(r"^\s*(?:ERROR:|error:|\u00d7|cause:|\u2570\u2500\u25b6|Because )")


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


def installer_env(uv: bool) -> dict[str, str]:
    """The installer's variables: the caller's, minus what would leak the caller's Python."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    environ.pop("VIRTUAL_ENV", None)
    if uv:
        environ["UV_PYTHON_DOWNLOADS"] = "never"
        environ.setdefault("UV_NO_PROGRESS", "1")
    else:
        environ["PIP_NO_INPUT"] = "1"
        environ["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return environ


_CREDENTIALS = re.compile(r"(://[^/\s:@]+):[^/\s@]+@")


def redact(text: str) -> str:
    """Hide passwords in URLs (``https://user:secret@host`` -> ``https://user:***@host``)."""
    return _CREDENTIALS.sub(r"\1:***@", text)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def kill_group(pgid: int) -> None:
    """SIGKILL a process group (gone already, or not ours: nothing to do)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Steps:
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

    def run(
        self, step: str, argv: Sequence[str], env: dict[str, str], cwd: Path, tool: str = ""
    ) -> None:
        """Run one command to its end; raise a :class:`BuildError` saying what failed."""
        tool = tool or Path(argv[0]).name
        self.progress.step(self.env, step)
        self.note(f"{step}: {redact(' '.join(argv))}")
        read_fd, write_fd = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHER, str(read_fd), *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(cwd),
                text=True,
                errors="replace",
                bufsize=1,
                pass_fds=(read_fd,),
                start_new_session=True,  # a group of its own: stopping it stops its children
            )
        except OSError as exc:
            os.close(write_fd)
            raise BuildError(self.env, step, f"cannot run {argv[0]}: {exc}") from exc
        finally:
            os.close(read_fd)
        try:
            returncode = self._follow(process, step)
        finally:
            os.close(write_fd)  # the watcher would kill the group on this close if still running
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
            raise BuildError(self.env, step, self._failure(tool, returncode))

    def _follow(self, process: subprocess.Popen[str], step: str) -> int:
        if self.marker is not None:  # so that a later build can stop it if we die
            self.marker.write_text(f"{process.pid}\n")
        threading.Thread(target=self._watch, args=(process,), daemon=True).start()
        assert process.stdout is not None
        announced: set[str] = set()
        try:
            with process.stdout:
                for raw in process.stdout:
                    line = raw.rstrip("\n")
                    self.log.write(raw if raw.endswith("\n") else raw + "\n")
                    if not line.strip():
                        continue
                    self.tail.append(line)
                    self.progress.output(self.env, line)
                    source = _SOURCE_BUILD.match(line)
                    if source and source.group(1) not in announced:
                        announced.add(source.group(1))
                        self.progress.step(
                            self.env,
                            f"compiling {source.group(1)} from source (no wheel for this Python):"
                            " this can take minutes",
                        )
        except BaseException:
            kill_group(process.pid)
            process.wait()
            raise
        returncode = process.wait()
        self.log.flush()
        return returncode

    def _failure(self, tool: str, returncode: int) -> str:
        """What the installer said went wrong: its first error lines, else its exit code."""
        found = [line.strip() for line in self.tail if _ERROR_LINE.match(line)][:2]
        what = f"{tool} stopped with exit code {returncode}"
        return f"{what}: {' '.join(found)}" if found else what

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
                kill_group(process.pid)
                return
