"""Launchers in the manifest and in the scheduler, without services: ``launcher:``, ``slurm:``
and ``hosts:`` validated like every key; a queued Slurm job's wait not counted as a slow start;
a launched worker's end named in its call's error; no direct path to a worker elsewhere."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import envrunner
from envrunner import EnvrunnerError, WorkerCrashed
from envrunner._actions import (
    Complete,
    Kill,
    KillReason,
    PoolConfig,
    Start,
    Ticket,
    WorkerState,
)
from envrunner._launchspec import slurm_minutes
from envrunner._manifest import load_manifest
from envrunner._runtime.errors import ManifestError
from envrunner._scheduler import Scheduler


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "environments.yaml"
    path.write_text("version: 1\nenvironments:\n" + textwrap.indent(textwrap.dedent(body), "  "))
    return path


def test_launchers_and_their_settings_are_read(tmp_path: Path) -> None:
    manifest = load_manifest(
        write(
            tmp_path,
            """\
            train:
              launcher: slurm
              slurm: {partition: gpu, cpus_per_task: 8, gpus: 1, mem: 32G, time: "02:00:00",
                      setup: ["module load cuda"], extra: {reservation: mine}}
            legacy:
              launcher: ssh
              hosts: [old-box, "me@other"]
              ssh: {python: /opt/venv/bin/python, tunnel: true, options: ["-J", "jump"]}
            plain: {}
            """,
        )
    )
    train = manifest["train"].launch
    assert train.kind == "slurm" and not train.local
    assert dict(train.slurm) == {
        "partition": "gpu",
        "cpus_per_task": 8,
        "gpus": 1,
        "mem": "32G",
        "time": 120,
        "setup": ("module load cuda",),
        "extra": {"reservation": "mine"},
    }
    assert manifest["legacy"].launch.hosts == ("old-box", "me@other")
    assert dict(manifest["legacy"].launch.ssh) == {
        "python": "/opt/venv/bin/python",
        "tunnel": True,
        "options": ("-J", "jump"),
    }
    assert manifest["plain"].launch.kind == "local" and manifest["plain"].launch.local


def test_every_launcher_mistake_is_reported_with_its_line_and_a_fix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        a:
          launcher: slurmm
        b:
          launcher: slurm
          slurm: {partitoin: gpu, time: soon, mem: lots, gpus: -1, extra: {mem: 3}}
        c:
          launcher: ssh
        d:
          hosts: [box]
        e:
          launcher: ssh
          hosts: [box]
          ssh: {python: venv/bin/python, tunel: true}
        """,
    )
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    text = str(caught.value)
    for expected in (
        "environments.yaml:4: environments.a.launcher: unknown launcher 'slurmm' (did you mean "
        "'slurm'?",
        ":7: environments.b.slurm.partitoin: unknown key (did you mean 'partition'?)",
        ":7: environments.b.slurm.time: expected a Slurm time limit",
        ":7: environments.b.slurm.mem: expected an amount of memory",
        ":7: environments.b.slurm.gpus: expected a whole number >= 0",
        ":7: environments.b.slurm.extra.mem: mem has its own key",
        ":9: environments.c.launcher: launcher: ssh needs hosts",
        ":11: environments.d.hosts: hosts with launcher: local",
        ":15: environments.e.ssh.python: not absolute: venv/bin/python",
        ":15: environments.e.ssh.tunel: unknown key (did you mean 'tunnel'?)",
    ):
        assert expected in text, text


def test_an_environment_cannot_be_both_launched_and_joined(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  launcher: ssh\n  hosts: [box]\n")
    with pytest.raises(EnvrunnerError, match=r"remote_envs.*launcher: ssh \(.*:4\)"):
        envrunner.Runner(path, remote_envs=["train"])


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("10:30", 11), ("02:00:00", 120), ("1-00", 1440), ("1-02:30:00", 1590)],
)
def test_slurm_time_limits_in_minutes(text: str, minutes: int) -> None:
    assert slurm_minutes(text) == minutes


def test_slurm_time_limits_that_are_not_read() -> None:
    assert slurm_minutes("soon") is None and slurm_minutes("0") is None


# --------------------------------------------------------------------------- the scheduler

ENV = "far"


def launched_pool(start_timeout: float = 10.0) -> tuple[Scheduler, bytes]:
    """One call to a pool of workers elsewhere (no direct path), its worker just launched."""
    s = Scheduler({ENV: PoolConfig(direct=False)}, start_timeout=start_timeout)
    s.submit(Ticket(1, ENV, "task1", retries=1), 0.0)
    ident = next(a.ident for a in s.prepared(ENV, 0.0) if isinstance(a, Start))
    return s, ident


def test_time_in_a_queue_is_not_a_slow_start() -> None:
    s, ident = launched_pool(start_timeout=10.0)
    s.launched(ident, 1234, pending=True)
    assert s.next_deadline() is None
    assert not s.tick(500.0)  # 500 s in the queue: nothing is killed
    s.launched(ident, 1234, pending=False, now=500.0)  # it runs: the start timeout counts now
    assert s.next_deadline() == 510.0
    kills = [a for a in s.tick(510.0) if isinstance(a, Kill)]
    assert [k.reason for k in kills] == [KillReason.START_TIMEOUT]


def test_a_launched_worker_is_never_checked_out_for_the_direct_path() -> None:
    s, ident = launched_pool()
    s.launched(ident, 1234)
    s.hello(ident, 1.0)
    s.result(ident, 1, "value", 2.0)
    assert s.slots[ident].state is WorkerState.IDLE
    assert s.checkout(Ticket(2, ENV, "task2"), 3.0) is None


def test_a_jobs_end_names_the_crash_and_the_call_is_retried_on_a_new_worker() -> None:
    s, ident = launched_pool()
    s.launched(ident, 1234)
    s.hello(ident, 1.0)
    why = "Slurm job 1234 was CANCELLED: cancelled (scancel, or an administrator)"
    actions = s.exited(ident, -9, 1, ["last line"], 2.0, why)
    assert not [a for a in actions if isinstance(a, Complete)]  # retried, not failed
    again = next(a.ident for a in actions if isinstance(a, Start))
    s.launched(again, 1235)
    s.hello(again, 3.0)
    actions = s.exited(again, -9, 1, [], 4.0, why.replace("1234", "1235"))
    (failed,) = [a for a in actions if isinstance(a, Complete)]
    assert isinstance(failed.outcome, WorkerCrashed)
    assert "Slurm job 1235 was CANCELLED" in str(failed.outcome)
