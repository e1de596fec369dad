"""Launchers for workers elsewhere: Slurm jobs (through submitit) and ``ssh``.

::

    Runner ─ cluster_setup(manifest) ─► a private run folder (0700) under ENVRUNNER_HOME:
             keys/ (broker pair, session key, the "launched" client pair; secrets 0600),
             jobs/ (submitit's folder: job scripts and logs) ─► a tcp door for the broker
    broker ─ Launcher.launch(request) ─► SlurmProcess (a job)      │ WorkerProcess (the ssh client)
    the job / ssh runs: PYTHON -m envrunner worker ENV --connect tcp://CALLER:PORT --keys DIR
                        --client launched --id IDENT --manifest M   (no secret in argv)
    worker ── CurveZMQ ──► the door; HELLO under IDENT: the broker's slot for that Start

Each launcher is one implementation of ``_process.Launcher``; the broker knows only that its
workers are not local (no shared memory, no direct channel, the tcp door).

May import: the standard library, ``submitit`` (only when a Slurm worker is launched),
``envrunner._home``, ``_keys``, ``_launchspec``, ``_process``, ``_runtime``, ``_slurm_job``.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _home
from ._keys import create_keys, read_session_key
from ._launchspec import LaunchSpec
from ._process import Launcher, LaunchRequest, Process, WorkerProcess
from ._runtime.errors import EnvrunnerError, describe_exit

__all__ = ["ClusterRun", "SlurmLauncher", "SlurmProcess", "SshLauncher", "cluster_setup"]

CLIENT = "launched"  # the client key pair of launched workers, in the run's keys folder
#: Seconds between looks at a job's state (and its output files).
SLURM_POLL = 1.0
#: Seconds in the queue before the first "waiting in Slurm queue" line, and between lines.
QUEUE_NOTE_FIRST = 5.0
QUEUE_NOTE_EVERY = 15.0

#: Slurm's end states, as a WorkerCrashed says them.
SLURM_ENDS = {
    "CANCELLED": "cancelled (scancel, or an administrator)",
    "PREEMPTED": "preempted by a job of higher priority",
    "TIMEOUT": "stopped at its time limit (slurm: time)",
    "OUT_OF_MEMORY": "stopped for using more memory than it asked for (slurm: mem)",
    "NODE_FAIL": "lost with its node (node failure)",
    "BOOT_FAIL": "lost: its node failed to boot",
    "DEADLINE": "stopped at its deadline",
    "FAILED": "failed",
    "GONE": "gone from Slurm's records (scontrol, sacct)",
    "COMPLETED": "ended",
}
_PENDING = ("PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED")


@dataclass
class ClusterRun:
    """What launched workers of one runner share: its private folder, keys and tcp door."""

    folder: Path
    keys: Path
    listen: str
    session_key: bytes
    manifest: Path

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def cluster_setup(
    specs: Iterable[Any], manifest: Path, listen: str | None, keys: Path | None
) -> tuple[ClusterRun | None, dict[str, Launcher]]:
    """Launchers for the environments that run elsewhere, and their run (None: all local).

    Keys are made for the run in a private folder under ``ENVRUNNER_HOME`` (shared with the
    jobs where the home is on a shared filesystem); a runner that already listens with its
    own keys folder gets a client pair for launched workers added to it instead.
    """
    remote = [spec for spec in specs if not spec.launch.local]
    if not remote:
        return None, {}
    runs, host = _home.home() / "runs", socket.gethostname()
    _home.make_dir(runs)
    _remove_stale_runs(runs, host)
    folder = runs / f"{host}-{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir(mode=0o700)
    if keys is None:
        keys = folder / "keys"
        listen = listen or "tcp://0.0.0.0:*"
    elif listen is None:
        raise EnvrunnerError("Runner(keys=...) without listen=...: give both, or neither")
    create_keys(keys, [CLIENT])
    run = ClusterRun(folder, keys, listen, read_session_key(keys / "session.key"), manifest)
    launchers: dict[str, Launcher] = {}
    for spec in remote:
        if spec.launch.kind == "slurm":
            launchers[spec.name] = SlurmLauncher(run, spec.launch)
        else:
            launchers[spec.name] = SshLauncher(run, spec.launch)
    return run, launchers


def _remove_stale_runs(runs: Path, host: str) -> None:
    """Remove the run folders (keys, job logs) of this host's callers that died without
    cleaning up (SIGKILL): their pid is gone."""
    for folder in runs.glob(f"{host}-*-*"):
        pid = folder.name[len(host) + 1 :].split("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass


def caller_address(address: str) -> str:
    """The door's address as a worker elsewhere reaches it: the caller's host name (or
    ``ENVRUNNER_CALLER_HOST``) where the door listens on every interface."""
    host = os.environ.get("ENVRUNNER_CALLER_HOST") or socket.gethostname()
    for wildcard in ("0.0.0.0", "*", "[::]"):
        address = address.replace(f"//{wildcard}:", f"//{host}:")
    return address


def worker_argv(run: ClusterRun, request: LaunchRequest, python: str) -> list[str]:
    """``envrunner worker`` for a launched worker: builds (or finds) the environment there,
    then becomes the worker with the identity the scheduler chose. No secret in it."""
    return [
        python,
        "-m",
        "envrunner",
        "worker",
        request.env,
        "--manifest",
        str(run.manifest),
        "--connect",
        caller_address(request.address),
        "--keys",
        str(run.keys),
        "--client",
        CLIENT,
        "--id",
        request.worker_id,
    ]


# --------------------------------------------------------------------------- Slurm


class SlurmProcess:
    """A worker that is a Slurm job: its state from ``scontrol`` (``sacct`` once it is gone),
    its output from the job's files, ``kill`` is ``scancel``."""

    pidfd = -1
    poll_every = SLURM_POLL

    def __init__(self, job_id: str, env: str, stdout: Path, stderr: Path) -> None:
        self.job_id = job_id
        self.pid = int(job_id.split("_", maxsplit=1)[0])
        self.env = env
        self.pending = True
        self.reason = ""
        self.returncode: int | None = None
        self.submitted = time.monotonic()
        self._next_note = QUEUE_NOTE_FIRST
        self._files = {"out": stdout, "err": stderr}
        self._offsets = {"out": 0, "err": 0}
        self._pipes: dict[str, tuple[int, int]] = {}
        self._pending_bytes = {"out": b"", "err": b""}
        for kind in ("out", "err"):
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            self._pipes[kind] = (read, write)
        self.stdout_fd = self._pipes["out"][0]
        self.stderr_fd = self._pipes["err"][0]
        self._lock = threading.Lock()
        self.ended = False  # Slurm says the job is over (or it was cancelled)
        self._say(f"envrunner: submitted Slurm job {job_id}")

    def __repr__(self) -> str:
        return f"<SlurmProcess job={self.job_id} env={self.env!r}>"

    # ---- the Process interface

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        with self._lock:
            if self.returncode is None:
                self.returncode = -9
                self.reason = f"Slurm job {self.job_id} was cancelled by envrunner"
        self._scancel()

    def told_to_go(self) -> None:
        pass  # it leaves by itself; the job's end is seen by the next look

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.returncode is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.returncode

    def close(self) -> None:
        if not self.ended:
            self._scancel()
        with self._lock:
            for read, write in self._pipes.values():
                for fd in (read, write):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._pipes = {}

    # ---- the watcher's

    def look(self, queued: tuple[str, str] | None) -> None:
        """Read the job's new output and state (from the launcher's watcher thread).

        Args:
            queued: Its (state, reason) in ``squeue``; None when squeue no longer lists it
                (then ``scontrol``/``sacct`` say how it ended).
        """
        self._copy_output()
        if self.ended:
            return
        state, why, exit_code = (*queued, None) if queued is not None else _job_state(self.job_id)
        if state in _PENDING or state == "":
            waited = time.monotonic() - self.submitted
            if waited >= self._next_note:
                self._next_note = waited + QUEUE_NOTE_EVERY
                detail = f" ({why})" if why and why != "None" else ""
                self._say(
                    f"envrunner: waiting in Slurm queue, job {self.job_id}, {waited:.0f} s{detail}"
                )
            return
        if state in ("RUNNING", "COMPLETING", "STAGE_OUT") and self.pending:
            self.pending = False
            waited = time.monotonic() - self.submitted
            self._say(f"envrunner: Slurm job {self.job_id} started after {waited:.0f} s in queue")
            return
        if state in ("RUNNING", "COMPLETING", "STAGE_OUT"):
            return
        self.ended = True
        self._copy_output()
        code = exit_code if exit_code is not None else -9
        meaning = SLURM_ENDS.get(state, state.lower())
        if state in ("FAILED", "GONE"):
            meaning = f"{meaning} ({describe_exit(code)})" if exit_code is not None else meaning
        with self._lock:
            for kind in list(self._pipes):
                self._flush(kind)
                try:
                    os.close(self._pipes[kind][1])
                except OSError:
                    pass
                self._pipes[kind] = (self._pipes[kind][0], -1)
            if self.returncode is None:
                if state == "COMPLETED":
                    self.reason = ""
                else:
                    self.reason = f"Slurm job {self.job_id} was {state}: {meaning}"
                self.returncode = code

    def _say(self, line: str) -> None:
        with self._lock:
            self._pending_bytes["err"] += line.encode() + b"\n"
            self._flush("err")

    def _copy_output(self) -> None:
        for kind, path in self._files.items():
            try:
                with open(path, "rb") as stream:
                    stream.seek(self._offsets[kind])
                    data = stream.read()
            except OSError:
                continue
            lines = [
                line
                for line in data.splitlines(keepends=True)
                if not line.startswith(b"submitit ")  # submitit's own log, before the worker
            ]
            self._offsets[kind] += len(data)
            with self._lock:
                self._pending_bytes[kind] += b"".join(lines)
                self._flush(kind)

    def _flush(self, kind: str) -> None:
        pipe = self._pipes.get(kind)
        data = self._pending_bytes[kind]
        if not pipe or pipe[1] < 0 or not data:
            return
        try:
            written = os.write(pipe[1], data)
        except (BlockingIOError, OSError):
            return
        self._pending_bytes[kind] = data[written:]

    def _scancel(self) -> None:
        try:
            subprocess.run(["scancel", self.job_id], capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _squeue() -> dict[str, tuple[str, str]] | None:
    """job id -> (state, reason) of this user's jobs that Slurm still lists; None on failure."""
    try:
        done = subprocess.run(
            ["squeue", "-h", "-u", str(os.getuid()), "-o", "%i|%T|%r"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    out: dict[str, tuple[str, str]] = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2])
    return out


def _job_state(job_id: str) -> tuple[str, str, int | None]:
    """(state, reason, exit code) of a job: ``scontrol`` while Slurm knows it, then ``sacct``."""
    try:
        done = subprocess.run(
            ["scontrol", "-o", "show", "job", job_id],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "", "", None
    if done.returncode == 0 and "JobState=" in done.stdout:
        fields = dict(
            part.split("=", 1) for part in done.stdout.split() if "=" in part
        )  # values with spaces are not among those read here
        return (
            fields.get("JobState", ""),
            fields.get("Reason", ""),
            _exit_code(fields.get("ExitCode")),
        )
    try:
        done = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "", "", None
    line = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    if done.returncode != 0 or "|" not in line:
        return "GONE", "", None  # neither knows it any more: it is over
    state, code = line.split("|", 1)
    return state.split()[0], "", _exit_code(code)


def _exit_code(text: str | None) -> int | None:
    """Slurm's ``CODE:SIGNAL`` as a returncode (negative: the signal)."""
    if not text or ":" not in text:
        return None
    code, sig = text.split(":", 1)
    try:
        return -int(sig) if int(sig) else int(code)
    except ValueError:
        return None


class SlurmLauncher:
    """Starts each worker as a Slurm job, through submitit."""

    local = False

    def __init__(self, run: ClusterRun, spec: LaunchSpec) -> None:
        self._run = run
        self._spec = spec
        self._executor: Any = None
        self._jobs: list[SlurmProcess] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def launch(self, request: LaunchRequest) -> Process:
        try:
            import submitit
        except ImportError:
            raise OSError(
                "launcher: slurm needs submitit: pip install 'envrunner-py[slurm]'"
            ) from None
        from ._slurm_job import become

        if self._executor is None:
            self._executor = submitit.SlurmExecutor(folder=self._run.folder / "jobs")
            self._executor.update_parameters(**self._parameters(request.env))
        argv = worker_argv(self._run, request, sys.executable)
        try:
            job = self._executor.submit(become, argv, os.getcwd())
        except Exception as exc:  # sbatch refused it: say Slurm's words
            raise OSError(f"sbatch failed: {exc}") from exc
        process = SlurmProcess(
            str(job.job_id), request.env, Path(job.paths.stdout), Path(job.paths.stderr)
        )
        with self._lock:
            self._jobs.append(process)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="envrunner-slurm-watch", daemon=True
                )
                self._thread.start()
        return process

    def _parameters(self, env: str) -> dict[str, Any]:
        slurm = self._spec.slurm
        out: dict[str, Any] = {"job_name": f"envrunner-{env}", "time": slurm.get("time")}
        for key in ("partition", "cpus_per_task", "mem", "account", "qos", "constraint"):
            if key in slurm:
                out[key] = slurm[key]
        if slurm.get("gpus"):
            out["gpus_per_node"] = slurm["gpus"]
        if slurm.get("setup"):
            out["setup"] = list(slurm["setup"])
        out["additional_parameters"] = dict(slurm.get("extra", {}))
        if out["time"] is None:  # the partition's default, not submitit's 5 minutes
            del out["time"]
            out["additional_parameters"].setdefault("time", "UNLIMITED")
        return out

    def _watch(self) -> None:
        """One ``squeue`` a second for all of the runner's jobs (not one query per job)."""
        while not self._stop.is_set():
            with self._lock:
                jobs = [job for job in self._jobs if not job.ended]
            listed = _squeue() if jobs else {}
            if listed is not None:  # None: squeue failed this time; ask again next time
                for job in jobs:
                    job.look(listed.get(job.job_id))
            self._stop.wait(SLURM_POLL)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            jobs = [job for job in self._jobs if not job.ended]
        if jobs:  # none left running after the caller (told to go, or not)
            ids = [job.job_id for job in jobs]
            try:
                subprocess.run(["scancel", *ids], capture_output=True, timeout=30, check=False)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._run.close()


# --------------------------------------------------------------------------- ssh


class SshLauncher:
    """Starts each worker with the system's ``ssh`` (BatchMode, the user's config and agent).

    The ssh client is the Process: its output is the worker's, its exit the worker's. Killing
    it closes the remote command's stdin, which the worker watches (``--stdin-watch``): it
    exits. A dead caller closes the worker's connection: it exits too.
    """

    local = False

    def __init__(self, run: ClusterRun, spec: LaunchSpec) -> None:
        self._run = run
        self._hosts = itertools.cycle(spec.hosts)

    def launch(self, request: LaunchRequest) -> Process:
        host = next(self._hosts)
        argv = [*worker_argv(self._run, request, sys.executable), "--stdin-watch"]
        variables = {
            name: os.environ[name]
            for name in ("ENVRUNNER_HOME", "ENVRUNNER_CALLER_HOST")
            if name in os.environ
        }
        remote = " ".join(
            [
                "cd",
                shlex.quote(os.getcwd()),
                "&&",
                "exec",
                "env",
                *(shlex.quote(f"{k}={v}") for k, v in variables.items()),
                *(shlex.quote(arg) for arg in argv),
            ]
        )
        ssh = [os.environ.get("ENVRUNNER_SSH", "ssh"), "-o", "BatchMode=yes", "-T"]
        ssh += shlex.split(os.environ.get("ENVRUNNER_SSH_OPTIONS", ""))
        popen = subprocess.Popen(
            [*ssh, host, remote],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
        stdin_fd = os.dup(popen.stdin.fileno())
        stdout_fd = os.dup(popen.stdout.fileno())
        stderr_fd = os.dup(popen.stderr.fileno())
        for stream in (popen.stdin, popen.stdout, popen.stderr):
            stream.close()
        for fd in (stdout_fd, stderr_fd):
            os.set_blocking(fd, False)
        pidfd = -1
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(popen.pid)
            except OSError:
                pidfd = -1
        return WorkerProcess(popen, stdin_fd, stdout_fd, stderr_fd, pidfd)

    def close(self) -> None:
        self._run.close()
