"""``launcher: slurm``: each worker is a Slurm job, submitted through submitit.

::

    broker ─ SlurmLauncher.launch(request) ─► SlurmProcess (no job yet: pending)
    watcher thread: the launches of one moment ─► one sbatch (a job array when there are
                    several: submitit's batch) ─► each SlurmProcess gets its job id
                    once a second: one squeue for every job ─► queued / running / ended
                    (scontrol, then sacct, say how a job that left squeue ended)
                    the job's output files ─► the process's pipes ─► "[env] line"
    kill()  ─► scancel;  close() ─► scancel of every job not known to have ended

Submitting in the watcher thread keeps sbatch (tens of milliseconds each) out of the broker's
loop. A job that sbatch refuses ends at once, with sbatch's words as its reason.

May import: the standard library, ``submitit`` (when a worker is launched),
``envrunner._launchers``, ``_launchspec``, ``_process``, ``_runtime``, ``_slurm_job``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ._launchers import ClusterRun, worker_argv
from ._launchspec import LaunchSpec
from ._process import LaunchRequest
from ._runtime.errors import describe_exit

__all__ = ["SLURM_ENDS", "SlurmLauncher", "SlurmProcess"]

#: Seconds between looks at the jobs' states (and their output files).
SLURM_POLL = 1.0
#: Seconds the watcher waits after a launch for more launches to submit with it (one array).
GATHER = 0.05
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
_RUNNING = ("RUNNING", "COMPLETING", "STAGE_OUT")


class SlurmProcess:
    """A worker that is a Slurm job: its state from ``squeue`` (then ``scontrol``/``sacct``),
    its output from the job's files, ``kill`` is ``scancel``."""

    pidfd = -1
    poll_every = SLURM_POLL

    def __init__(self, env: str, argv: list[str]) -> None:
        self.env = env
        self.argv = argv
        self.job_id = ""  # set once sbatch has taken it
        self.pending = True
        self.reason = ""
        self.returncode: int | None = None
        self.ended = False  # Slurm says the job is over (or it never was one)
        self.submitted = time.monotonic()
        self._next_note = QUEUE_NOTE_FIRST
        self._files: dict[str, Path] = {}
        self._offsets = {"out": 0, "err": 0}
        self._pending_bytes = {"out": b"", "err": b""}
        self._pipes: dict[str, tuple[int, int]] = {}
        for kind in ("out", "err"):
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            self._pipes[kind] = (read, write)
        self.stdout_fd = self._pipes["out"][0]
        self.stderr_fd = self._pipes["err"][0]
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<SlurmProcess job={self.job_id or '(not yet)'} env={self.env!r}>"

    @property
    def pid(self) -> int:
        """The job's id (an array's, for a task of one), for messages; 0 before sbatch."""
        return int(self.job_id.split("_", maxsplit=1)[0]) if self.job_id else 0

    # ---- the Process interface

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        with self._lock:
            if self.returncode is None:
                self.returncode = -9
                self.reason = f"Slurm job {self.job_id or '(not submitted)'} was cancelled"
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
                    if fd >= 0:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
            self._pipes = {}

    # ---- the watcher's

    def submitted_as(self, job: Any) -> None:
        """sbatch took it: its job id and output files."""
        self.job_id = str(job.job_id)
        self._files = {"out": Path(job.paths.stdout), "err": Path(job.paths.stderr)}
        self._say(f"envrunner: submitted Slurm job {self.job_id}")
        if self.returncode is not None:  # killed while it was being submitted
            self._scancel()

    def refused(self, why: str) -> None:
        """sbatch refused it: it ends now, with sbatch's words."""
        self._end(1, f"sbatch failed: {why}")

    def look(self, queued: tuple[str, str] | None) -> None:
        """Read the job's new output and state.

        Args:
            queued: Its (state, reason) in ``squeue``; None when squeue no longer lists it
                (then ``scontrol``/``sacct`` say how it ended).
        """
        if not self.job_id or self.ended:
            return
        self._copy_output()
        state, why, code = (*queued, None) if queued is not None else _job_state(self.job_id)
        if state in _PENDING or state == "":
            waited = time.monotonic() - self.submitted
            if waited >= self._next_note:
                self._next_note = waited + QUEUE_NOTE_EVERY
                detail = f" ({why})" if why and why != "None" else ""
                self._say(
                    f"envrunner: waiting in Slurm queue, job {self.job_id}, {waited:.0f} s{detail}"
                )
        elif state in _RUNNING:
            if self.pending:
                self.pending = False
                waited = time.monotonic() - self.submitted
                self._say(f"envrunner: Slurm job {self.job_id} started after {waited:.0f} s")
        else:
            self._copy_output()
            meaning = SLURM_ENDS.get(state, state.lower())
            if state in ("FAILED", "GONE") and code is not None:
                meaning = f"{meaning} ({describe_exit(code)})"
            why = "" if state == "COMPLETED" else f"Slurm job {self.job_id} was {state}: {meaning}"
            self._end(code if code is not None else -9, why)

    def _end(self, code: int, why: str) -> None:
        with self._lock:
            self.ended = True
            for kind, (read, write) in list(self._pipes.items()):
                self._flush(kind)
                if write >= 0:
                    os.close(write)
                self._pipes[kind] = (read, -1)
            if self.returncode is None:
                self.reason, self.returncode = why, code

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
            self._offsets[kind] += len(data)
            lines = data.splitlines(keepends=True)
            kept = [line for line in lines if not line.startswith(b"submitit ")]  # its own log
            with self._lock:
                self._pending_bytes[kind] += b"".join(kept)
                self._flush(kind)

    def _flush(self, kind: str) -> None:
        pipe = self._pipes.get(kind)
        data = self._pending_bytes[kind]
        if not pipe or pipe[1] < 0 or not data:
            return
        try:
            written = os.write(pipe[1], data)
        except OSError:  # full (the broker reads it soon) or gone
            return
        self._pending_bytes[kind] = data[written:]

    def _scancel(self) -> None:
        if self.job_id:
            _run(["scancel", self.job_id])


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _squeue() -> dict[str, tuple[str, str]] | None:
    """job id -> (state, reason) of this user's jobs Slurm lists (array tasks one by one);
    None when squeue failed."""
    done = _run(["squeue", "-h", "-r", "-u", str(os.getuid()), "-o", "%i|%T|%r"])
    if done is None or done.returncode != 0:
        return None
    out: dict[str, tuple[str, str]] = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2])
    return out


def _job_state(job_id: str) -> tuple[str, str, int | None]:
    """(state, reason, exit code) of a job: ``scontrol`` while Slurm knows it, then ``sacct``."""
    done = _run(["scontrol", "-o", "show", "job", job_id])
    if done is None:
        return "", "", None
    if done.returncode == 0 and "JobState=" in done.stdout:
        fields = dict(part.split("=", 1) for part in done.stdout.split() if "=" in part)
        state, reason = fields.get("JobState", ""), fields.get("Reason", "")
        return state, reason, _exit_code(fields.get("ExitCode"))
    done = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"])
    line = done.stdout.strip().splitlines()[0] if done is not None and done.stdout.strip() else ""
    if done is None or done.returncode != 0 or "|" not in line:
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
    """Starts each worker as a Slurm job, through submitit; several at once as one job array."""

    local = False

    def __init__(self, run: ClusterRun, spec: LaunchSpec) -> None:
        self._run = run
        self._spec = spec
        self._executor: Any = None
        self._jobs: list[SlurmProcess] = []
        self._queued: list[SlurmProcess] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def launch(self, request: LaunchRequest) -> SlurmProcess:
        try:
            import submitit
        except ImportError:
            raise OSError(
                "launcher: slurm needs submitit: pip install 'envrunner-py[slurm]'"
            ) from None
        if self._executor is None:
            self._executor = submitit.SlurmExecutor(folder=self._run.folder / "jobs")
            self._executor.update_parameters(**self._parameters(request.env))
        process = SlurmProcess(request.env, worker_argv(self._run, request, sys.executable))
        with self._lock:
            self._queued.append(process)
            self._jobs.append(process)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="envrunner-slurm", daemon=True
                )
                self._thread.start()
        self._wake.set()
        return process

    def _parameters(self, env: str) -> dict[str, Any]:
        slurm = self._spec.slurm
        out: dict[str, Any] = {"job_name": f"envrunner-{env}"}
        for key in ("partition", "cpus_per_task", "mem", "account", "qos", "constraint", "time"):
            if key in slurm:
                out[key] = slurm[key]
        if slurm.get("gpus"):
            out["gpus_per_node"] = slurm["gpus"]
        if slurm.get("setup"):
            out["setup"] = list(slurm["setup"])
        out["additional_parameters"] = dict(slurm.get("extra", {}))
        if "time" not in out:  # the partition's limit, not submitit's default of 5 minutes
            out["additional_parameters"].setdefault("time", "UNLIMITED")
        return out

    def _watch(self) -> None:
        while not self._stop.is_set():
            if self._wake.wait(SLURM_POLL):
                time.sleep(GATHER)  # launches of the same moment go together
                self._wake.clear()
            self._submit()
            with self._lock:
                jobs = [job for job in self._jobs if job.job_id and not job.ended]
            listed = _squeue() if jobs else {}
            if listed is not None:  # None: squeue failed this time; ask again next time
                for job in jobs:
                    job.look(listed.get(job.job_id))

    def _submit(self) -> None:
        """Submit what was launched since the last look: one job, or one array of several."""
        from ._slurm_job import become

        with self._lock:
            batch = [p for p in self._queued if p.returncode is None]
            self._queued.clear()
        if not batch or self._stop.is_set():
            return
        cwd = os.getcwd()
        try:
            if len(batch) == 1:
                jobs = [self._executor.submit(become, batch[0].argv, cwd)]
            else:
                with self._executor.batch():
                    jobs = [self._executor.submit(become, p.argv, cwd) for p in batch]
        except Exception as exc:  # sbatch refused them: say Slurm's words
            for process in batch:
                process.refused(" ".join(str(exc).split()))
            return
        for process, job in zip(batch, jobs, strict=True):
            process.submitted_as(job)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(60)  # a submission under way finishes: its jobs are cancelled
        with self._lock:
            ids = [job.job_id for job in self._jobs if job.job_id and not job.ended]
        if ids:  # none left after the caller, told to go or not
            _run(["scancel", *ids])
        self._run.close()
