"""Workers on other machines: CurveZMQ keys, tcp, and nothing let in without them.

"Another machine" is this one over tcp on the loopback address: the worker is started by
``envrunner worker`` as its operator would start it there, and knows the caller only by address.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy
import pytest
import tasks
from support import make_keys

import envrunner


def start_worker(
    manifest: Path, env: str, address: str, keys: Path, client: str | None, *extra: str
) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "envrunner", "worker", env, "-m", str(manifest)]
    argv += ["--connect", address, "--keys", str(keys)]
    if client:
        argv += ["--client", client]
    return subprocess.Popen(
        [*argv, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.kill()
    _, err = process.communicate(timeout=30)
    return err


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    assert "created" in make_keys(folder, "gpu1").stdout
    return folder


def test_keys_are_created_once_with_private_secrets(keys: Path) -> None:
    for secret in ("broker.key_secret", "session.key", "gpu1.key_secret"):
        assert stat.S_IMODE((keys / secret).stat().st_mode) == 0o600
    assert (keys / "broker.key").exists() and (keys / "clients" / "gpu1.key").exists()
    assert "already holds every key" in make_keys(keys, "gpu1").stdout


def listening_runner(manifest_path: Path, keys: Path, **options: Any) -> envrunner.Runner:
    """A runner that accepts remote workers for "modern" on a local tcp port, with Curve."""
    return envrunner.Runner(
        manifest_path,
        progress=False,
        listen="tcp://127.0.0.1:*",
        keys=keys,
        remote_envs=["modern"],
        **options,
    )


def test_a_worker_on_another_machine_serves_calls_over_curve(
    manifest_path: Path, keys: Path
) -> None:
    with listening_runner(manifest_path, keys) as runner:
        address = runner.remote_address
        assert address.startswith("tcp://127.0.0.1:")
        worker = start_worker(manifest_path, "modern", address, keys, "gpu1")
        info = runner.call("modern", tasks.whoami)
        assert info["env"] == "modern" and info["pid"] == worker.pid
        big = numpy.arange(200_000, dtype=numpy.float64)  # no shared memory across machines
        assert runner.call("modern", tasks.array_stats, big)["sum"] == float(big.sum())
        assert runner.call("same", tasks.add, 2, 2) == 4  # local environments as usual
    worker.communicate(timeout=30)  # told to go when the runner shut down
    assert worker.returncode == 0


def test_a_worker_whose_key_is_not_listed_never_gets_in(
    manifest_path: Path, keys: Path, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger-keys"
    make_keys(stranger, "evil")
    # the stranger has our session key and broker key, but its own, unlisted, client key
    for name in ("session.key", "broker.key"):
        (stranger / name).write_bytes((keys / name).read_bytes())
        (stranger / name).chmod(0o600)
    with listening_runner(manifest_path, keys, start_timeout=3) as runner:
        intruder = start_worker(manifest_path, "modern", runner.remote_address, stranger, "evil")
        try:
            with pytest.raises(envrunner.WorkerStartError, match="no worker on another machine"):
                runner.call("modern", tasks.add, 1, 1)
        finally:
            stop(intruder)


def test_listening_on_tcp_without_curve_is_refused_unless_asked_by_name(
    manifest_path: Path, keys: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "session-only"
    bare.mkdir()
    (bare / "session.key").write_bytes((keys / "session.key").read_bytes())
    (bare / "session.key").chmod(0o600)
    with pytest.raises(envrunner.EnvrunnerError, match="without CurveZMQ keys"):
        envrunner.Runner(manifest_path, listen="tcp://127.0.0.1:*", keys=bare)
    with pytest.raises(envrunner.EnvrunnerError, match="needs keys=DIR"):
        envrunner.Runner(manifest_path, listen="tcp://127.0.0.1:*")
    with pytest.warns(RuntimeWarning, match="without CurveZMQ"):
        runner = envrunner.Runner(
            manifest_path,
            progress=False,
            listen="tcp://127.0.0.1:*",
            keys=bare,
            insecure=True,
            remote_envs=["modern"],
        )
    with runner:
        worker = start_worker(
            manifest_path, "modern", runner.remote_address, bare, None, "--insecure"
        )
        assert runner.call("modern", tasks.add, 3, 4) == 7
    worker.communicate(timeout=30)


def test_a_secret_readable_by_others_is_refused(
    keys: Path, manifest_path: Path, tmp_path: Path
) -> None:
    leaky = tmp_path / "leaky"
    make_keys(leaky, "w")
    (leaky / "session.key").chmod(0o644)
    with pytest.raises(envrunner.EnvrunnerError, match="chmod 600"):
        envrunner.Runner(manifest_path, listen="tcp://127.0.0.1:*", keys=leaky)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "envrunner",
            "worker",
            "modern",
            "-m",
            str(manifest_path),
            "--connect",
            "tcp://127.0.0.1:1",
            "--keys",
            str(leaky),
            "--client",
            "w",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "chmod 600" in result.stderr


def test_a_remote_worker_that_goes_silent_fails_its_call(manifest_path: Path, keys: Path) -> None:
    with listening_runner(manifest_path, keys, heartbeat_timeout=2.0) as runner:
        worker = start_worker(manifest_path, "modern", runner.remote_address, keys, "gpu1")
        assert runner.call("modern", tasks.add, 1, 1) == 2
        long = runner.submit("modern", tasks.sleep, 600)
        deadline = time.monotonic() + 20
        while not long.running():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(worker.pid, signal.SIGSTOP)  # its machine hangs: no answer, no heartbeat
        try:
            with pytest.raises(envrunner.WorkerCrashed, match="stopped answering heartbeats"):
                long.result(60)
        finally:
            os.kill(worker.pid, signal.SIGKILL)
            stop(worker)


def test_a_remote_worker_leaves_when_its_caller_dies(
    manifest_path: Path, keys: Path, tmp_path: Path
) -> None:
    script = tmp_path / "caller.py"
    script.write_text(
        "import sys, time, envrunner\n"
        f"sys.path.insert(0, {str(Path(tasks.__file__).parent)!r})\n"
        "import tasks\n"
        f"runner = envrunner.Runner({str(manifest_path)!r}, progress=False, "
        f"listen='tcp://127.0.0.1:*', keys={str(keys)!r}, remote_envs=['modern'])\n"
        "print(runner.remote_address, flush=True)\n"
        "print(runner.call('modern', tasks.add, 1, 1), flush=True)\n"
        "time.sleep(600)\n"
    )
    caller = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert caller.stdout is not None
    address = caller.stdout.readline().strip()
    worker = start_worker(manifest_path, "modern", address, keys, "gpu1")
    try:
        assert caller.stdout.readline().strip() == "2"  # the remote worker served a call
        caller.kill()
        caller.communicate(timeout=30)
        worker.communicate(timeout=30)  # it noticed and left on its own
        assert worker.returncode == 75
    finally:
        for process in (caller, worker):
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=30)


def test_a_remote_worker_for_a_local_environment_is_refused(
    manifest_path: Path, keys: Path
) -> None:
    with listening_runner(manifest_path, keys) as runner:
        stray = start_worker(manifest_path, "same", runner.remote_address, keys, "gpu1")
        try:
            local = runner.call("same", tasks.whoami)
            assert local["pid"] != stray.pid  # "same" runs here, on its own workers
        finally:
            stop(stray)
