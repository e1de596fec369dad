"""Issue 20, the rest: processes of the same user, without the session key, at a runner's sockets.

Each attacker is a real process (``intruder.py``). A *stranger* is not a child of the caller
(``--detach``): the runner's gate (``envrunner/_gate.py``) refuses its connections before reading
anything. A *child* of the caller gets past the gate (it is the user's own code), so it is what
the session key alone must stop: nothing is sent on a channel before the worker proved the key
on it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faults
import pytest
from support import small_tmpfs, wait_for

import envrunner

TESTS = Path(__file__).parent
INTRUDER = str(TESTS / "intruder.py")


class Intruder:
    """One attacking process, and what it reports."""

    def __init__(self, report: Path, *args: str, detach: bool) -> None:
        self.report = report
        argv = [sys.executable, INTRUDER, *(["--detach"] if detach else []), str(report), *args]
        if detach:
            started = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)
            self.pid = int(started.stdout.split()[0])
            self.popen: subprocess.Popen[bytes] | None = None
        else:
            self.popen = subprocess.Popen(argv)
            self.pid = self.popen.pid

    def state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.report.read_text())
        except (OSError, ValueError):
            return {}
        return state

    def wait(self, key: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: self.state() if self.state().get(key) else {}, timeout, key)

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.popen is not None:
            self.popen.wait(30)


@pytest.fixture
def intruders() -> Iterator[list[Intruder]]:
    started: list[Intruder] = []
    yield started
    for intruder in started:
        intruder.kill()


# --------------------------------------------------------------------------- the direct channel


def test_nothing_is_sent_on_a_direct_channel_before_the_worker_proved_the_key(
    manifest_path: Path,
    tmp_path: Path,
    intruders: list[Intruder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A process connected to a future worker's direct socket first (a child of the caller: the
    gate lets it in). It receives nothing, and the calls go through the broker instead."""
    with envrunner.Runner(manifest_path, progress=False) as runner:
        assert runner.call("same", faults.add, 1, 1) == 2  # w1; the next worker is w2
        assert runner.rundir is not None
        intruder = Intruder(
            tmp_path / "pair.json", "pair", str(runner.rundir / "dw2"), "60", detach=False
        )
        intruders.append(intruder)
        intruder.wait("ready")
        task = envrunner.task(env="other", timeout=30)(faults.add)
        with caplog.at_level(logging.WARNING, logger="envrunner.broker"):
            assert [task(n, 1) for n in range(5)] == [1, 2, 3, 4, 5]
        assert intruder.state()["received"] == 0
        assert "did not prove the session key on its direct channel" in caplog.text
        assert str(runner.rundir / "dw2") in caplog.text
        assert len(runner.worker_pids("other")) == 1  # the same worker serves, via the broker
    assert intruder.state()["received"] == 0


def test_a_stranger_cannot_connect_to_a_direct_channel(
    manifest_path: Path, tmp_path: Path, intruders: list[Intruder]
) -> None:
    with envrunner.Runner(manifest_path, progress=False) as runner:
        assert runner.call("same", faults.add, 1, 1) == 2
        assert runner.rundir is not None
        before = runner.rejected_messages
        intruder = Intruder(
            tmp_path / "pair.json", "pair", str(runner.rundir / "dw2"), "60", detach=True
        )
        intruders.append(intruder)
        intruder.wait("ready")
        task = envrunner.task(env="other", timeout=30)(faults.add)
        assert [task(n, 1) for n in range(5)] == [1, 2, 3, 4, 5]
        wait_for(lambda: runner.rejected_messages > before, 10, "the refusal to be counted")
        assert intruder.state()["received"] == 0


# --------------------------------------------------------------------------- heartbeats


@pytest.mark.parametrize("who", ["stranger", "child"])
def test_a_squatted_heartbeat_identity_costs_no_healthy_worker(
    manifest_path: Path, tmp_path: Path, intruders: list[Intruder], who: str
) -> None:
    """A process claims the next worker's heartbeat identity as it was (``w2.hb``) before the
    worker starts: the worker's heartbeats still arrive, and it is not killed as hung (the limit
    here is 1.5 s). A stranger is not let in at all; a child of the caller is, and finds that
    the worker's heartbeat identity is another, made with the key."""
    with envrunner.Runner(manifest_path, progress=False, heartbeat_timeout=1.5) as runner:
        assert runner.call("same", faults.add, 1, 1) == 2
        assert runner.rundir is not None
        broker = str(runner.rundir / "broker")
        before = runner.rejected_messages
        intruder = Intruder(
            tmp_path / "hb.json", "identity", broker, "w2.hb", "60", detach=who == "stranger"
        )
        intruders.append(intruder)
        intruder.wait("ready")
        assert runner.call("other", faults.add, 2, 2) == 4
        (pid,) = runner.worker_pids("other")
        # Four heartbeat limits, idle and busy: the worker is neither killed nor replaced.
        assert runner.call("other", faults.sleep_then, 3.0, "busy") == "busy"
        assert runner.call("other", faults.sleep_then, 3.0, "still") == "still"
        assert runner.worker_pids("other") == [pid]
        if who == "stranger":
            assert runner.rejected_messages > before


# --------------------------------------------------------------------------- floods

FLOOD_SCRIPT = """
import json, os, resource, subprocess, sys, time
sys.path.insert(0, {tests!r})
import envrunner, faults
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, {hard}))  # a common default soft limit
runner = envrunner.Runner({manifest!r}, progress=False)
assert runner.call("same", faults.add, 1, 1) == 2
soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
report = {report!r}
started = subprocess.run(
    [sys.executable, {intruder!r}, "--detach", report, "connections",
     str(runner.rundir / "broker"), "{count}"],
    capture_output=True, text=True, check=True)
print(started.stdout.split()[0], flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(report):
    assert time.monotonic() < deadline, "the flood never reported"
    time.sleep(0.05)
opened = json.load(open(report))["opened"]
answers = [runner.call("same", faults.add, n, 1) for n in range(3)]
answers.append(runner.call("other", faults.add, 5, 5))  # a new worker: new descriptors
runner.shutdown()
print(json.dumps({{"soft": soft, "opened": opened, "answers": answers}}), flush=True)
"""


def test_a_connection_flood_does_not_abort_the_caller(manifest_path: Path, tmp_path: Path) -> None:
    """About 1,020 raw connections to the broker's socket aborted a caller whose soft limit was
    1,024 (libzmq asserts on EMFILE): the runner raises its soft limit to the hard one."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard limit of open files is {hard}: no room above 1,024 to test")
    script = FLOOD_SCRIPT.format(
        tests=str(TESTS),
        hard=hard,
        manifest=str(manifest_path),
        report=str(tmp_path / "flood.json"),
        intruder=INTRUDER,
        count=1500,
    )
    caller = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    lines = caller.stdout.split()
    if lines:
        try:
            os.kill(int(lines[0]), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    assert caller.returncode == 0, caller.stderr[-2000:]
    outcome = json.loads(caller.stdout.splitlines()[-1])
    assert outcome["opened"] == 1500
    assert outcome["soft"] > 1500
    assert outcome["answers"] == [1, 2, 3, 10]


def peak_rss(pid: int) -> int:
    """The peak resident memory of a process, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_an_unsigned_message_cannot_make_the_caller_allocate(
    manifest_path: Path, tmp_path: Path, intruders: list[Intruder]
) -> None:
    """One unsigned message of 24 frames of 60 MB pushed the caller to 1.5 GB before it was
    dropped. A stranger's connection is refused before a frame of it is read."""
    with envrunner.Runner(manifest_path, progress=False) as runner:
        assert runner.call("same", faults.add, 1, 1) == 2
        assert runner.rundir is not None
        before = runner.rejected_messages
        peak = peak_rss(os.getpid())
        intruder = Intruder(
            tmp_path / "frames.json",
            "frames",
            str(runner.rundir / "broker"),
            "24",
            str(60 * 1000 * 1000),
            detach=True,
        )
        intruders.append(intruder)
        intruder.wait("tried")
        wait_for(lambda: runner.rejected_messages > before, 60, "the message to be refused")
        assert peak_rss(os.getpid()) - peak < 200 * 1000 * 1000
        assert runner.call("same", faults.add, 2, 2) == 4


# --------------------------------------------------------------------------- a full run folder

FULL_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import envrunner, faults
runner = envrunner.Runner({manifest!r}, progress=False)
assert runner.call("same", faults.add, 1, 1) == 2
filler = os.path.join({mount!r}, "filler")
n = 0
if {what!r} == "space":  # the disk fills up once the runner runs
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    os.close(fd)
else:  # or its inodes do
    open(filler, "w").close()
    while True:
        try:
            open(os.path.join({mount!r}, f"f{{n}}"), "w").close()
            n += 1
        except OSError:
            break
try:
    runner.call("other", faults.add, 2, 2)
    print("NO ERROR")
except envrunner.EnvrunnerError as exc:
    print("ERROR", type(exc).__name__, exc)
print("BROKER", runner._broker is not None and runner._broker._thread.is_alive())
assert runner.call("same", faults.add, 3, 3) == 6  # a live worker still serves
os.unlink(filler)
for k in range(n):
    os.unlink(os.path.join({mount!r}, f"f{{k}}"))
print("AFTER", runner.call("modern", faults.add, 4, 4))  # a new worker starts again
runner.shutdown()
"""


@pytest.mark.parametrize("what", ["space", "inodes"])
def test_a_full_run_folder_fails_calls_clearly_and_the_runner_recovers(
    manifest_path: Path, tmp_path: Path, what: str
) -> None:
    """No room left for a new worker's files (its started-call record, or its direct socket):
    its calls fail with the path and the fix, the broker lives on, and once there is room
    again a new worker starts."""
    mount = tmp_path / "rundir"
    with small_tmpfs(mount, "size=1M,nr_inodes=64,mode=700"):
        script = FULL_SCRIPT.format(
            tests=str(TESTS), manifest=str(manifest_path), mount=str(mount), what=what
        )
        caller = subprocess.run(
            [sys.executable, "-c", script],
            env=dict(os.environ, ENVRUNNER_RUNDIR=str(mount)),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert caller.returncode == 0, caller.stdout + caller.stderr[-3000:]
    out = caller.stdout
    assert "ERROR WorkerStartError" in out, out
    assert "No space left on device: cannot make" in out and str(mount) in out
    assert "cannot run" not in out  # the interpreter is fine: the message says what is not
    made = "/dw" if what == "inodes" else "/sw"  # the direct socket, or the started record
    assert made in out.split("cannot make", 1)[1].split()[0]
    assert "ENVRUNNER_RUNDIR" in out
    assert "BROKER True" in out
    assert "AFTER 8" in out
