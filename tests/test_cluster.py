"""Workers started by Slurm (launcher: slurm) and over ssh (launcher: ssh), on real services.

The services are a single-node Slurm cluster (munged, slurmctld, slurmd from Debian's packages)
and an sshd on 127.0.0.1 with a key made for the tests, both started by ``.ci/services.sh``
(``.ci/run`` starts them before the tests; here, as root, the fixture starts them when they are
missing). Without them (and without root to start them) the tests skip, naming what is missing;
with ``CI`` set they fail instead: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import cluster_tasks
import numpy
import pytest
import tasks
from support import pid_gone, wait_for

import envrunner
from envrunner import TaskTimeoutError, WorkerCrashed

ROOT = Path(__file__).resolve().parent.parent
SERVICES = Path(os.environ.get("ENVRUNNER_SERVICES", "/tmp/envrunner-services"))
REQUIREMENTS = '["six==1.16.0", "numpy>=2"]'  # the session's "same": built once

pytestmark = pytest.mark.timeout(300)


def _missing() -> list[str]:
    missing = []
    for tool in ("sbatch", "squeue", "scancel", "scontrol", "ssh"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (Debian: slurm-wlm, openssh-client)")
    if not missing:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
        if "UP" not in ping.stdout:
            missing.append("a running slurmctld (scontrol ping)")
    if not (SERVICES / "ssh_config").exists():
        missing.append(f"an sshd on 127.0.0.1 ({SERVICES}/ssh_config)")
    return missing


@pytest.fixture(scope="module")
def services() -> Path:
    missing = _missing()
    if missing and os.geteuid() == 0:
        subprocess.run([str(ROOT / ".ci" / "services.sh")], check=False, timeout=300)
        missing = _missing()
    if missing:
        message = "Slurm/ssh services missing: " + "; ".join(missing) + " (run .ci/services.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SERVICES


@pytest.fixture(scope="module")
def cluster_manifest(tmp_path_factory: pytest.TempPathFactory, services: Path) -> Path:
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    path = tmp_path_factory.mktemp("cluster") / "environments.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            environments:
              here:
                python: "{minor}"
                requirements: {REQUIREMENTS}
              far:
                python: "{minor}"
                requirements: {REQUIREMENTS}
                launcher: slurm
                slurm: {{cpus_per_task: 1, time: "00:20:00"}}
              many:
                python: "{minor}"
                requirements: {REQUIREMENTS}
                workers: 3
                launcher: slurm
                slurm: {{time: "00:20:00"}}
              box:
                python: "{minor}"
                requirements: {REQUIREMENTS}
                launcher: ssh
                hosts: [envrunner-test]
              tunneled:
                python: "{minor}"
                requirements: {REQUIREMENTS}
                launcher: ssh
                hosts: [envrunner-test]
                ssh: {{tunnel: true, python: "{sys.executable}"}}
            """
        )
    )
    return path


@pytest.fixture
def ssh_options(services: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's ssh config (port, key) for ``launcher: ssh``, as a user's ~/.ssh/config."""
    monkeypatch.setenv("ENVRUNNER_SSH_OPTIONS", f"-F {services / 'ssh_config'}")
    monkeypatch.setenv("ENVRUNNER_CALLER_HOST", "127.0.0.1")


@pytest.fixture
def cluster_runner(cluster_manifest: Path, ssh_options: None) -> Iterator[envrunner.Runner]:
    with envrunner.Runner(cluster_manifest, progress=False, start_timeout=120) as runner:
        yield runner


def in_queue(job: str) -> bool:
    out = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True, check=False
    )
    return job in out.stdout.split()


@pytest.mark.parametrize("far", ["far", "box", "tunneled"], ids=["slurm", "ssh", "ssh-tunnel"])
def test_arrays_travel_between_a_launched_and_a_local_worker(
    cluster_runner: envrunner.Runner, far: str
) -> None:
    array = numpy.arange(200_000, dtype=numpy.float64)  # 1.6 MB: frames over tcp
    there = cluster_runner.submit(far, cluster_tasks.double, array).result(timeout=180)
    here = cluster_runner.submit("here", cluster_tasks.double, there).result(timeout=120)
    back = cluster_runner.submit(far, cluster_tasks.double, here).result(timeout=60)
    numpy.testing.assert_array_equal(back, array * 8)
    job, pid = cluster_runner.submit(far, cluster_tasks.where).result(timeout=60)
    if far == "far":
        assert job and in_queue(job), "the worker is not a running Slurm job"
    else:
        assert not job and pid != os.getpid()
        worker = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        connect = worker[worker.index(b"--connect") + 1]
        assert connect.startswith(b"ipc:///tmp/envrunner-" if far == "tunneled" else b"tcp://")
        parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        watcher = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
        assert watcher[watcher.index(b"--keys") + 1] == b"-"  # sent on stdin, not a shared path


def test_workers_started_together_are_one_job_array(cluster_runner: envrunner.Runner) -> None:
    futures = [cluster_runner.submit("many", cluster_tasks.array_task, 3) for _ in range(3)]
    answers = {future.result(timeout=180) for future in futures}
    arrays = {array for array, _ in answers}
    assert len(arrays) == 1 and "" not in arrays, answers
    assert {task for _, task in answers} == {"0", "1", "2"}


@pytest.mark.parametrize("far", ["far", "box"], ids=["slurm", "ssh"])
def test_a_launched_workers_output_reaches_the_caller_prefixed(
    cluster_runner: envrunner.Runner, capfd: pytest.CaptureFixture[str], far: str
) -> None:
    cluster_runner.submit(far, cluster_tasks.shout, f"hello from {far}").result(timeout=180)
    seen: list[str] = []

    def printed() -> bool:
        seen.append(capfd.readouterr().out)
        return f"[{far}] hello from {far}" in "".join(seen)

    wait_for(printed, 10, "the worker's line on the caller's stdout")


@pytest.mark.parametrize("far", ["far", "box"], ids=["slurm", "ssh"])
def test_a_kept_result_stays_in_the_launched_worker(
    cluster_runner: envrunner.Runner, tmp_path: Path, far: str
) -> None:
    ref = envrunner.task(env=far, keep=True)(tasks.make_model)(str(tmp_path / "gone"))
    first = cluster_runner.call(far, tasks.use_model, ref, 2)
    second = cluster_runner.call(far, tasks.use_model, ref, 3)
    assert first[:2] == second[:2] and second[2] == 5  # the same object, in place
    kept = envrunner.task(env=far, keep=True)(tasks.make_array).submit(6).result(timeout=60)
    numpy.testing.assert_array_equal(kept.fetch(), numpy.arange(6.0).reshape(3, 2))


@pytest.mark.parametrize("far", ["far", "box"], ids=["slurm", "ssh"])
def test_a_call_past_its_timeout_stops_its_worker(
    cluster_runner: envrunner.Runner, tmp_path: Path, far: str
) -> None:
    job, pid = cluster_runner.submit(far, cluster_tasks.where).result(timeout=180)
    slow = envrunner.task(env=far, timeout=2)(cluster_tasks.wait_here)
    with pytest.raises(TaskTimeoutError):
        slow(str(tmp_path / "started"), 120)
    if far == "far":
        wait_for(lambda: not in_queue(job), 60, f"Slurm job {job} to leave squeue")
    wait_for(lambda: pid_gone(pid), 60, f"worker {pid} to exit")


def test_a_stopped_ssh_worker_is_killed_for_missing_heartbeats(
    cluster_manifest: Path, ssh_options: None, tmp_path: Path
) -> None:
    with envrunner.Runner(cluster_manifest, progress=False, heartbeat_timeout=3) as runner:
        _, pid = runner.submit("box", cluster_tasks.where).result(timeout=180)
        started = tmp_path / "started"
        future = runner.submit("box", cluster_tasks.wait_here, str(started), 120)
        wait_for(started.exists, 60, "the call to start")
        os.kill(pid, signal.SIGSTOP)  # stuck: no heartbeat, and it cannot watch its stdin
        try:
            with pytest.raises(WorkerCrashed, match="heartbeats"):
                future.result(timeout=60)
            wait_for(lambda: pid_gone(pid), 30, f"stopped worker {pid} to be killed")
        finally:
            if not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_scancel_fails_the_call_with_the_jobs_end_and_the_next_call_gets_a_new_job(
    cluster_runner: envrunner.Runner, tmp_path: Path
) -> None:
    job, _ = cluster_runner.submit("far", cluster_tasks.where).result(timeout=180)
    started = tmp_path / "started"
    future = cluster_runner.submit("far", cluster_tasks.wait_here, str(started), 120)
    wait_for(started.exists, 60, "the call to start in the job")
    subprocess.run(["scancel", job], check=True)
    with pytest.raises(WorkerCrashed) as caught:
        future.result(timeout=60)
    assert f"Slurm job {job} was CANCELLED" in str(caught.value)
    again, _ = cluster_runner.submit("far", cluster_tasks.where).result(timeout=180)
    assert again and again != job


def test_a_call_with_retries_runs_again_in_a_new_job_after_scancel(
    cluster_runner: envrunner.Runner, tmp_path: Path
) -> None:
    job, _ = cluster_runner.submit("far", cluster_tasks.where).result(timeout=180)
    started = tmp_path / "started"
    retried = envrunner.task(env="far", retries=1)(cluster_tasks.wait_once)
    future = retried.submit(str(started), 120)
    wait_for(started.exists, 60, "the call to start in the job")
    subprocess.run(["scancel", job], check=True)
    assert future.result(timeout=180) == "again"


def test_queue_time_is_shown_and_not_counted_as_a_slow_start(
    cluster_manifest: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    manifest = cluster_manifest.parent / "queued.yaml"
    manifest.write_text(
        cluster_manifest.read_text().replace(
            'time: "00:20:00"}', 'time: "00:20:00", extra: {begin: "now+8"}}'
        )
    )
    with envrunner.Runner(manifest, progress=False, start_timeout=3) as runner:
        job, _ = runner.submit("far", cluster_tasks.where).result(timeout=120)
    err = capfd.readouterr().err
    assert f"[far] envrunner: waiting in Slurm queue, job {job}, " in err, err


def test_killing_the_ssh_worker_fails_its_call_and_the_next_call_gets_a_new_one(
    cluster_runner: envrunner.Runner, tmp_path: Path
) -> None:
    _, pid = cluster_runner.submit("box", cluster_tasks.where).result(timeout=180)
    started = tmp_path / "started"
    future = cluster_runner.submit("box", cluster_tasks.wait_here, str(started), 120)
    wait_for(started.exists, 60, "the call to start on the ssh worker")
    os.kill(pid, signal.SIGKILL)  # the worker "on the other machine"
    with pytest.raises(WorkerCrashed):
        future.result(timeout=60)
    _, again = cluster_runner.submit("box", cluster_tasks.where).result(timeout=180)
    assert again != pid


CALLER = """\
import sys
import envrunner
import cluster_tasks

runner = envrunner.Runner(sys.argv[1], progress=False, start_timeout=120)
job, pid = runner.submit(sys.argv[2], cluster_tasks.where).result(timeout=180)
print(job or "-", pid, flush=True)
runner.submit(sys.argv[2], cluster_tasks.wait_here, sys.argv[3], 600).result()
"""


@pytest.mark.parametrize("far", ["far", "box", "tunneled"], ids=["slurm", "ssh", "ssh-tunnel"])
def test_a_caller_killed_with_sigkill_leaves_no_job_and_no_worker(
    cluster_manifest: Path, ssh_options: None, tmp_path: Path, far: str
) -> None:
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    started = tmp_path / "started"
    environ = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    caller = subprocess.Popen(
        [sys.executable, str(script), str(cluster_manifest), far, str(started)],
        stdout=subprocess.PIPE,
        text=True,
        env=environ,
    )
    try:
        assert caller.stdout is not None
        job, pid = caller.stdout.readline().split()
        wait_for(started.exists, 60, "the call to start")
        caller.kill()
        caller.wait(10)
        if far == "far":
            wait_for(lambda: not in_queue(job), 60, f"Slurm job {job} to leave squeue")
        wait_for(lambda: pid_gone(int(pid)), 60, f"worker {pid} to exit")
    finally:
        if caller.poll() is None:
            caller.kill()
        caller.wait()
        if caller.stdout is not None:
            caller.stdout.close()
