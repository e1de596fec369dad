"""Nothing lost, nothing hung: every failure, at every stage, ends in the error that says why.

The table: stage (encode arguments, decode them in the worker, run, encode the result, decode
it in the caller) x failure (exception, sys.exit, os._exit, segfault, kill -9, hang past the
timeout, a hang that holds the GIL) -> the exception the caller gets, on both paths a call can
take: ``direct`` (a synchronous call on an idle worker, run by the calling thread) and ``broker``
(a submitted call with more calls queued behind it, some sent ahead to the same worker). After
each row the same runner serves the next call, and the queued calls got their own answers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import faults
import pytest
from support import WriteManifest, alive, small_tmpfs, wait_for

import envrunner

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def runner(manifest_path: Path) -> Any:
    with envrunner.Runner(manifest_path, progress=False, heartbeat_timeout=3.0) as shared:
        yield shared


CRASHED = (envrunner.WorkerCrashed, "")

# stage, failure -> (exception type, a fragment of its message)
TABLE: list[tuple[str, str, type[BaseException], str]] = [
    ("encode arguments", "exception", envrunner.EncodeError, "argument 1 (value)"),
    ("decode in worker", "exception", envrunner.DecodeError, "failed on purpose"),
    ("decode in worker", "os._exit", envrunner.WorkerCrashed, "exit code 3"),
    ("decode in worker", "segfault", envrunner.WorkerCrashed, "SIGSEGV"),
    ("run", "exception", ValueError, "failed on purpose"),
    ("run", "sys.exit", envrunner.RemoteError, "SystemExit: 3"),
    ("run", "os._exit", envrunner.WorkerCrashed, "exit code 3"),
    ("run", "segfault", envrunner.WorkerCrashed, "signal SIGSEGV (-11): a native crash"),
    ("run", "kill -9", envrunner.WorkerCrashed, "signal SIGKILL (-9): killed: out of memory"),
    ("run", "hang", envrunner.TaskTimeoutError, "ran past its timeout of 2s"),
    ("run", "hang holding the GIL", envrunner.WorkerCrashed, "stopped answering heartbeats"),
    ("encode result", "exception", envrunner.EncodeError, "cannot be sent back"),
    ("encode result", "os._exit", envrunner.WorkerCrashed, "exit code 3"),
    ("encode result", "segfault", envrunner.WorkerCrashed, "SIGSEGV"),
    ("decode in caller", "exception", envrunner.DecodeError, "cannot load the result"),
]


def provoke(runner: envrunner.Runner, env: str, stage: str, how: str, path: str) -> Any:
    hang_limit = 2.0 if how == "hang" else None
    fn: Any
    args: tuple[Any, ...]
    if stage == "encode arguments":
        fn, args = faults.take, (faults.FailsWhenSent(how),)
    elif stage == "decode in worker":
        fn, args = faults.take, (faults.FailsWhenLoaded(how),)
    elif stage == "run":
        fn, args = envrunner.task(env=env, timeout=hang_limit)(faults.run), (how,)
    elif stage == "encode result":
        fn, args = faults.give_back, (how,)
    else:
        fn, args = faults.give_unloadable, (how,)
    if path == "direct":
        return runner.call(env, fn, *args)
    future = runner.submit(env, fn, *args)
    queued = [runner.submit(env, faults.add, i, 1) for i in range(3)]
    try:
        return future.result(60)
    finally:
        assert [q.result(60) for q in queued] == [1, 2, 3]


@pytest.mark.parametrize("path", ["direct", "broker"])
@pytest.mark.parametrize(
    ("stage", "how", "error", "message"),
    TABLE,
    ids=[f"{stage}-{how}".replace(" ", "_") for stage, how, _, _ in TABLE],
)
def test_the_fault_table(
    runner: envrunner.Runner,
    env: str,
    stage: str,
    how: str,
    error: type,
    message: str,
    path: str,
) -> None:
    with pytest.raises(error) as caught:
        provoke(runner, env, stage, how, path)
    assert message in str(caught.value)
    if isinstance(caught.value, envrunner.WorkerCrashed):
        assert caught.value.env == env and caught.value.pid > 0
        if how == "segfault":
            assert any("Segmentation fault" in line for line in caught.value.stderr_tail)
    assert runner.call(env, faults.add, 2, 3) == 5  # the same runner serves the next call


# stage "run" in the middle of a batch, failure -> (exception type, a fragment of its message)
MID_BATCH: list[tuple[str, type[BaseException], str]] = [
    ("exception", ValueError, "failed on purpose"),
    ("os._exit", envrunner.WorkerCrashed, "exit code 3"),
    ("segfault", envrunner.WorkerCrashed, "SIGSEGV"),
    ("kill -9", envrunner.WorkerCrashed, "SIGKILL"),
    ("hang", envrunner.TaskTimeoutError, "ran past its timeout of 2s"),
]


@pytest.mark.parametrize(("how", "error", "message"), MID_BATCH, ids=[h for h, _, _ in MID_BATCH])
def test_a_failure_in_the_middle_of_a_batch_fails_only_the_call_that_ran(
    runner: envrunner.Runner,
    env: str,
    tmp_path: Path,
    how: str,
    error: type,
    message: str,
) -> None:
    """Six calls submitted at once, the fourth fails: the calls before it keep their answers,
    the calls after it run once (on another worker if this one died). With one worker (env
    ``other``) the first two go as they come and the other four in one CALLS message, so the
    failure is in the middle of it; with two, each worker gets one call ahead, never a batch."""
    log = tmp_path / "runs"
    warm = [runner.submit(env, faults.sleep_then, 0.3, i) for i in (0, 1)]
    assert [w.result(60) for w in warm] == [0, 1]  # its workers are up and idle
    fails = envrunner.task(env=env, timeout=2.0 if how == "hang" else None)(faults.logged)
    # While the broker's lock is held, its thread cannot take commands: it takes all six
    # calls in one pass afterwards.
    with runner._broker.lock:  # type: ignore[union-attr]
        futures = [runner.submit(env, faults.logged, str(log), i) for i in (0, 1, 2)]
        futures.append(runner.submit(env, fails, str(log), 3, how, 0.2))
        futures += [runner.submit(env, faults.logged, str(log), i) for i in (4, 5)]
    assert [f.result(60) for f in futures[:3]] == [0, 1, 2]
    with pytest.raises(error) as caught:
        futures[3].result(60)
    assert message in str(caught.value)
    assert [f.result(60) for f in futures[4:]] == [4, 5]
    assert sorted(log.read_text().split()) == ["0", "1", "2", "3", "4", "5"]  # each ran once
    assert runner.call(env, faults.add, 2, 3) == 5


# --------------------------------------------------------------------------- what else goes on


def test_a_crash_in_one_environment_leaves_the_others_running(runner: envrunner.Runner) -> None:
    long = runner.submit("same", faults.sleep_then, 1.0, "finished")
    with pytest.raises(envrunner.WorkerCrashed):
        runner.call("other", faults.run, "segfault")
    assert long.result(60) == "finished"


def test_queued_calls_get_a_new_worker_after_a_crash(runner: envrunner.Runner) -> None:
    crash = runner.submit("other", faults.run, "os._exit")
    queued = [runner.submit("other", faults.add, i, i) for i in range(5)]
    with pytest.raises(envrunner.WorkerCrashed):
        crash.result(60)
    assert [f.result(60) for f in queued] == [0, 2, 4, 6, 8]


def test_retries_run_a_crashed_call_again_but_never_an_exception(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    flaky = envrunner.task(env="other", retries=1)(faults.crash_once)
    assert runner.call("other", flaky, str(tmp_path / "marker")) == "survived"
    strict = envrunner.task(env="other")(faults.crash_once)
    with pytest.raises(envrunner.WorkerCrashed):
        runner.call("other", strict, str(tmp_path / "other-marker"))
    counter = tmp_path / "counter"
    raising = envrunner.task(env="other", retries=3)(faults.count_and_raise)
    with pytest.raises(ValueError):
        runner.call("other", raising, str(counter))
    assert counter.read_text() == "x"


def test_an_environment_timeout_applies_to_its_calls(write_manifest: WriteManifest) -> None:
    path = write_manifest(
        'version: 1\nenvironments:\n  slow:\n    python: "3.12"\n    timeout: 0.5\n'
    )
    with envrunner.Runner(path, progress=False) as scoped:
        with pytest.raises(envrunner.TaskTimeoutError, match=r"timeout of 0\.5s"):
            scoped.call("slow", faults.sleep_then, 30, None)
        assert scoped.call("slow", faults.add, 1, 1) == 2


def test_max_calls_recycles_a_worker(write_manifest: WriteManifest) -> None:
    path = write_manifest('version: 1\nenvironments:\n  w:\n    python: "3.12"\n    max_calls: 2\n')
    with envrunner.Runner(path, progress=False) as scoped:
        pids = [scoped.call("w", faults.pid) for _ in range(6)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]


def test_a_worker_that_cannot_start_stops_after_a_few_attempts(
    write_manifest: WriteManifest, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-site"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(
        "import os, sys\nprint('boom', file=sys.stderr)\nos._exit(4)\n"
    )
    path = write_manifest(
        f'version: 1\nenvironments:\n  broken:\n    python: "3.12"\n'
        f"    env: {{PYTHONPATH: {broken}}}\n"
    )
    with envrunner.Runner(path, progress=False) as scoped:
        with pytest.raises(envrunner.WorkerStartError) as caught:
            scoped.call("broken", faults.add, 1, 1)
        message = str(caught.value)
        assert "exit code 4" in message and "gave up after 3 attempts in a row" in message
        assert "| boom" in message
        with pytest.raises(envrunner.WorkerStartError):  # it stays failed: no loop of restarts
            scoped.call("broken", faults.add, 1, 1)


# --------------------------------------------------------------------------- the caller's side

SCRIPT = """\
import os, sys
sys.path.insert(0, {tests!r})
import envrunner, faults
runner = envrunner.Runner({manifest!r}, progress=False)
with runner:
    print("workers", runner.call("other", faults.pid), runner.call("same", faults.pid), flush=True)
    print("rundir", runner.rundir, flush=True)
    {body}
"""


def start_script(tmp_path: Path, manifest_path: Path, body: str) -> subprocess.Popen[str]:
    script = tmp_path / "caller.py"
    script.write_text(
        SCRIPT.format(
            tests=str(TESTS),
            manifest=str(manifest_path),
            body=textwrap.indent(textwrap.dedent(body).strip(), "    ").lstrip(),
        )
    )
    return subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def read_started(process: subprocess.Popen[str]) -> tuple[list[int], Path]:
    assert process.stdout is not None
    first = process.stdout.readline().split()
    second = process.stdout.readline().split()
    assert first and first[0] == "workers", process.stderr.read() if process.stderr else ""
    return [int(first[1]), int(first[2])], Path(second[1])


def test_killing_the_caller_takes_every_worker_with_it(tmp_path: Path, manifest_path: Path) -> None:
    marker = tmp_path / "running"
    process = start_script(
        tmp_path,
        manifest_path,
        f"runner.call('other', faults.signal_and_wait, {str(marker)!r}, 600)",
    )
    pids, rundir = read_started(process)
    wait_for(marker.exists, what="the long call to start")
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10, what="orphans to exit")
    # A kill -9 leaves the runtime folder behind; the next run (any envrunner run of this
    # user's: other ones may be running on this machine) removes it.
    with envrunner.Runner(manifest_path, progress=False) as next_run:
        next_run.call("same", faults.add, 1, 1)
    assert not rundir.exists()


def test_ctrl_c_stops_running_calls_and_returns_within_seconds(
    tmp_path: Path, manifest_path: Path
) -> None:
    marker = tmp_path / "running"
    process = start_script(
        tmp_path,
        manifest_path,
        f"""
        queued = runner.submit('other', faults.add, 1, 1)
        try:
            runner.call('same', faults.signal_and_wait, {str(marker)!r}, 600)
        except KeyboardInterrupt:
            print("interrupted; queued cancelled:", queued.cancelled(), flush=True)
            raise
        """,
    )
    pids, _ = read_started(process)
    wait_for(marker.exists, what="the long call to start")
    started = time.monotonic()
    os.kill(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert "interrupted" in out and "KeyboardInterrupt" in err
    assert process.returncode != 0
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10, what="workers to exit")


def test_a_second_ctrl_c_stops_waiting_for_calls_at_exit(
    tmp_path: Path, manifest_path: Path
) -> None:
    marker = tmp_path / "running"
    process = start_script(
        tmp_path,
        manifest_path,
        f"""
        runner.submit('same', faults.signal_and_wait, {str(marker)!r}, 600)
        print("main done", flush=True)
        """,
    )
    pids, _ = read_started(process)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "main done"
    wait_for(marker.exists, what="the long call to start")
    # the with block now waits for the running call; Ctrl-C stops the wait and the worker
    started = time.monotonic()
    os.kill(process.pid, signal.SIGINT)
    process.communicate(timeout=30)
    assert time.monotonic() - started < 10
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10, what="workers to exit")


# --------------------------------------------------------------------------- builds


def test_a_hanging_build_stops_at_its_timeout_and_leaves_nothing(tmp_path: Path) -> None:
    from localpkg import make_package

    package = make_package(tmp_path / "pkg", "hangs")
    (package / "hold").touch()  # its build never finishes
    manifest = tmp_path / "environments.yaml"
    manifest.write_text(
        "version: 1\nenvironments:\n  env:\n    build_timeout: 3\n"
        f'    requirements: ["hangs @ file://{package}"]\n'
    )
    from envrunner._environments import build, resolve, state
    from envrunner._manifest import load_manifest

    resolved = resolve(load_manifest(manifest)["env"])
    with pytest.raises(envrunner.BuildError) as caught:
        build(resolved)
    assert "timed out after 3s and was stopped" in str(caught.value)
    assert "build_timeout" in str(caught.value)
    assert not resolved.path.exists() and state(resolved) == "missing"
    backend = int((package / "builds.log").read_text().split()[0])
    wait_for(lambda: not alive(backend), timeout=10, what="the build backend to be stopped")


def test_a_full_disk_fails_the_build_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small-home", "size=12m") as mount:
        manifest = tmp_path / "environments.yaml"
        manifest.write_text('version: 1\nenvironments:\n  big:\n    requirements: ["numpy"]\n')
        environ = dict(os.environ, ENVRUNNER_HOME=str(mount))
        run = subprocess.run(
            [sys.executable, "-m", "envrunner", "build", "-m", str(manifest)],
            capture_output=True,
            text=True,
            env=environ,
            timeout=300,
            check=False,
        )
        assert run.returncode == 1
        assert "No space left on device" in run.stderr
        assert "environment 'big'" in run.stderr
        leftovers = [p for p in (mount / "envs").iterdir() if p.is_dir()]
        assert leftovers == []


# --------------------------------------------------------------------------- the broker


def test_the_broker_survives_whatever_a_peer_sends(runner: envrunner.Runner) -> None:
    import zmq

    runner.call("same", faults.add, 1, 1)
    assert runner.rundir is not None
    context = zmq.Context()
    try:
        for identity in (b"w1", b"intruder", b"w1.hb"):
            peer = context.socket(zmq.DEALER)
            peer.setsockopt(zmq.IDENTITY, identity)
            peer.setsockopt(zmq.LINGER, 0)
            peer.connect(f"ipc://{runner.rundir / 'broker'}")
            for frames in (
                [b"garbage"],
                [b"\x00" * 32 + b"\x95\x01\x04\x09"],  # well formed, wrongly signed
                [b"\x00" * 32],  # truncated
                [b"\x00" * 32, b"\xc1" * 100, os.urandom(2_000_000)],  # oversized, invalid
                [],
            ):
                if frames:
                    peer.send_multipart(frames)
            peer.close()
    finally:
        context.term()
    threads = {t.name for t in threading.enumerate()}
    assert "envrunner-broker" in threads
    assert [runner.call("same", faults.add, i, 1) for i in range(3)] == [1, 2, 3]


def test_a_caller_whose_output_nobody_reads_still_supervises_and_finishes_calls(
    tmp_path: Path, manifest_path: Path
) -> None:
    """Worker output is written by a thread of its own: a full pipe (the caller's stdout that
    nobody reads) blocks only that thread. Calls keep finishing, timeouts keep their time, and no
    healthy worker is taken for hung (the heartbeat limit here is 3 s)."""
    done = tmp_path / "done"
    script = tmp_path / "quiet_reader.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os, sys, time
            sys.path.insert(0, {str(TESTS)!r})
            import envrunner, faults
            with envrunner.Runner({str(manifest_path)!r}, progress=False,
                                  heartbeat_timeout=3.0) as runner:
                said = runner.call("same", faults.shout, 200_000)  # megabytes into a full pipe
                late = envrunner.task(env="other", timeout=30)(faults.sleep_then)
                answers = [runner.call("other", late, 4.0, "other env")]
                answers += [runner.call("same", faults.add, 2, 3)]
                with open({str(done)!r}, "w") as out:
                    json.dump([said, *answers], out)
                os._exit(0)  # its stdout will never be read: do not wait to flush it
            """
        )
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,  # never read
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(done.exists, 120, "the caller to finish its calls while its stdout is full")
        assert json.loads(done.read_text()) == [200_000, "other env", 5]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        assert process.stdout is not None
        process.stdout.close()
