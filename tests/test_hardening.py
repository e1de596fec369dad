"""Issue 20, hardening: what an adversarial probe of the landed code found, each as a test.

The session key cannot be read through /proc, secret keys are private from their first byte,
processes a task leaves behind die with the runner, large plain values travel or fail at the
sender with the limit and the way around it, a full /dev/shm falls back to frames, the home
ignores the umask, manifests cannot smuggle installer options, and a remote worker whose keys
are refused says so and stops.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import faults
import pytest
from support import wait_for

import envrunner
from envrunner._keys import create_keys


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


# --------------------------------------------------------------------------- the session key


def key_fd_of(pid: int) -> int:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(argv[argv.index(b"--key-fd") + 1])


def test_the_session_key_cannot_be_read_through_proc(runner: envrunner.Runner) -> None:
    # What the attacker did to a pipe: open the worker's end again through /proc and read.
    # Proof that the attack works on a pipe (the old way): a child holding one, unread.
    read_end, write_end = os.pipe()
    os.write(write_end, b"k" * 32)
    holder = subprocess.Popen(["sleep", "60"], pass_fds=(read_end,))
    try:
        with open(f"/proc/{holder.pid}/fd/{read_end}", "rb", buffering=0) as stolen:
            assert stolen.read(32) == b"k" * 32
    finally:
        holder.kill()
        holder.wait()
        os.close(read_end)
        os.close(write_end)
    # A worker's key channel is a socket: /proc/PID/fd/N cannot be opened at all.
    assert runner.call("same", faults.add, 1, 1) == 2
    pids = runner.worker_pids()
    assert pids
    for pid in pids:
        fd = key_fd_of(pid)
        assert os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        with pytest.raises(OSError) as refused:
            open(f"/proc/{pid}/fd/{fd}", "rb")
        assert refused.value.errno == errno.ENXIO


# --------------------------------------------------------------------------- envrunner keys


def test_secret_keys_are_never_seen_open_to_others(tmp_path: Path) -> None:
    """Another user read 21 of 80 secret files between their creation (0644) and a chmod:
    watch every file of the folder while 80 client keys are made under umask 000."""
    folder = tmp_path / "keys"
    seen: dict[str, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for parent in (folder, folder / "clients"):
                try:
                    names = os.listdir(parent)
                except OSError:
                    continue
                for name in names:
                    try:
                        mode = os.stat(parent / name).st_mode
                    except OSError:
                        continue
                    seen[name] = seen.get(name, 0) | stat.S_IMODE(mode)

    watcher = threading.Thread(target=watch)
    old = os.umask(0)
    watcher.start()
    try:
        created = create_keys(folder, [f"client{n}" for n in range(80)])
    finally:
        done.set()
        watcher.join()
        os.umask(old)
    secrets = [path for path in created if path.name.endswith("key_secret")]
    assert len(secrets) == 81
    for path in [*secrets, folder / "session.key"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert not seen.get(path.name, 0) & 0o077, f"{path.name} was seen {oct(seen[path.name])}"
    for path in (folder, folder / "clients"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "broker.key").stat().st_mode) == 0o644
    # The keys load as CurveZMQ certificates.
    import zmq.auth

    public, secret = zmq.auth.load_certificate(str(folder / "client3.key_secret"))
    assert secret and zmq.auth.load_certificate(str(folder / "clients/client3.key"))[0] == public


def test_keys_refuse_a_folder_others_can_write(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(envrunner.EnvrunnerError, match="other users can write there"):
        create_keys(folder, ["a"])
    assert not list(folder.iterdir())


# --------------------------------------------------------------------------- cleanup


def test_processes_a_task_leaves_behind_die_at_shutdown(manifest_path: Path) -> None:
    with envrunner.Runner(manifest_path, progress=False) as runner:
        children = runner.call("same", faults.leave_children)
        assert all(running(pid) for pid in children)
    wait_for(lambda: not any(running(pid) for pid in children), timeout=10, what="children to die")


def test_processes_a_task_leaves_behind_die_when_its_worker_is_killed(
    manifest_path: Path,
) -> None:
    with envrunner.Runner(manifest_path, progress=False, heartbeat_timeout=None) as runner:
        children = runner.call("other", faults.leave_children)
        task = envrunner.task(env="other", timeout=1.0)(faults.run)
        with pytest.raises(envrunner.TaskTimeoutError):
            runner.call("other", task, "hang")  # the worker is killed at the timeout
        wait_for(lambda: not any(running(pid) for pid in children), timeout=10, what="children")
