"""What launched workers share (the run: its folder, keys and tcp door), their command line,
and ``launcher: ssh``.

::

    Runner ─ cluster_setup (``_cluster.py``) ─► make_run(): a private folder (0700) under
             ENVRUNNER_HOME/runs: keys/ (broker pair, session key, the "launched" client pair;
             secrets 0600), jobs/ (submitit's scripts and logs) ─► a tcp door for the broker
    broker ─ Launcher.launch(request) ─► SlurmProcess (``_slurm.py``) │ WorkerProcess (ssh client)
    the job / ssh runs: PYTHON -m envrunner worker ENV --connect tcp://CALLER:PORT --keys DIR
                        --client launched --id IDENT --manifest M   (no secret in argv)
    worker ── CurveZMQ ──► the door; HELLO under IDENT: the broker's slot for that Start

Each launcher is one implementation of ``_process.Launcher``; the broker knows only that its
workers are not local (no shared memory, no direct channel, the tcp door).

May import: the standard library, ``envrunner._home``, ``_keys``, ``_launchspec``, ``_process``,
``_runtime``.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import _home
from ._keys import create_keys, read_session_key
from ._launchspec import LaunchSpec
from ._process import LaunchRequest, Process, WorkerProcess
from ._runtime.errors import EnvrunnerError

__all__ = ["CLIENT", "ClusterRun", "SshLauncher", "caller_address", "make_run", "worker_argv"]

CLIENT = "launched"  # the client key pair of launched workers, in the run's keys folder


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


def make_run(manifest: Path, listen: str | None, keys: Path | None) -> ClusterRun:
    """A private run folder (0700) under ``ENVRUNNER_HOME``, with keys made for the run (shared
    with the jobs where the home is on a shared filesystem); a runner that already listens with
    its own keys folder gets a client pair for launched workers added to it instead."""
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
    return ClusterRun(folder, keys, listen, read_session_key(keys / "session.key"), manifest)


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


def worker_argv(
    run: ClusterRun, request: LaunchRequest, python: str, connect: str = "", keys: str = ""
) -> list[str]:
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
        connect or caller_address(request.address),
        "--keys",
        keys or str(run.keys),
        "--client",
        CLIENT,
        "--id",
        request.worker_id,
    ]


# --------------------------------------------------------------------------- ssh


class SshLauncher:
    """Starts each worker with the system's ``ssh`` (BatchMode, the user's config and agent).

    The ssh client is the Process: its output is the worker's, its exit the worker's. Killing
    it closes the remote command's stdin, which the worker watches (``--stdin-watch``): it
    exits. A dead caller closes the worker's connection: it exits too. With ``ssh: {tunnel:
    true}`` the worker reaches the caller through the ssh connection (``-R``: a Unix socket on
    the host forwarded to the door), for hosts that cannot reach the caller.
    """

    local = False

    def __init__(self, run: ClusterRun, spec: LaunchSpec) -> None:
        self._run = run
        self._hosts = itertools.cycle(spec.hosts)
        self._python = str(spec.ssh.get("python") or sys.executable)
        self._tunnel = bool(spec.ssh.get("tunnel"))
        self._options = list(spec.ssh.get("options", ()))

    def launch(self, request: LaunchRequest) -> Process:
        host = next(self._hosts)
        forward: list[str] = []
        connect = ""
        if self._tunnel:
            port = request.address.rsplit(":", 1)[1]
            remote_socket = f"/tmp/envrunner-{self._run.folder.name}-{request.worker_id}.sock"
            forward = ["-o", "ExitOnForwardFailure=yes", "-R", f"{remote_socket}:127.0.0.1:{port}"]
            connect = f"ipc://{remote_socket}"
        argv = [*worker_argv(self._run, request, self._python, connect, keys="-"), "--stdin-watch"]
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
        ssh = [os.environ.get("ENVRUNNER_SSH", "ssh"), "-o", "BatchMode=yes", "-T", *forward]
        ssh += [*shlex.split(os.environ.get("ENVRUNNER_SSH_OPTIONS", "")), *self._options]
        popen = subprocess.Popen(
            [*ssh, host, remote],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
        stdin_fd = os.dup(popen.stdin.fileno())
        try:  # the keys, privately: the first line of the remote command's stdin
            os.write(stdin_fd, self._keys_line())
        except OSError:
            pass  # ssh is gone already: its exit says why
        return WorkerProcess.of(popen, stdin_fd)

    def _keys_line(self) -> bytes:
        names = ("session.key", "broker.key", f"{CLIENT}.key_secret")
        files = {name: (self._run.keys / name).read_text() for name in names}
        return json.dumps(files).encode() + b"\n"

    def close(self) -> None:
        self._run.close()
