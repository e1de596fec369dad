"""Lock files (#18): exact rebuilds elsewhere, stale locks, builds swapped in only when complete.

Real uv resolves, real builds into private homes, real signals to real `envrunner` processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from localpkg import make_package
from support import WriteManifest, pid_gone, run_cli, wait_for

from envrunner._requirements import named, parse

CALLER = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _manifest(folder: Path, requirements: list[str], name: str = "tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "environments.yaml"
    path.write_text(
        f'version: 1\nenvironments:\n  {name}:\n    python: "{CALLER}"\n'
        f"    requirements: {json.dumps(requirements)}\n"
    )
    return path


def _machine(tmp_path: Path, name: str) -> dict[str, str]:
    """A home and a uv cache of its own: another machine, as far as a build can tell."""
    return {"home": str(tmp_path / name / "home"), "UV_CACHE_DIR": str(tmp_path / name / "uv")}


def test_two_machines_building_from_one_lock_get_identical_freezes(tmp_path: Path) -> None:
    project = tmp_path / "project"
    _manifest(project, ["six"])
    locked = run_cli("lock", cwd=project, **_machine(tmp_path, "a"))
    assert locked.returncode == 0, locked.stderr
    lock = project / "pylock.tiny.toml"
    text = lock.read_text()
    assert "# envrunner lock of environment 'tiny'" in text and 'lock-version = "1.0"' in text
    for runtime in ("pyzmq", "msgpack", "cloudpickle", "six"):  # the runtime is locked too
        assert f'name = "{runtime}"' in text
    assert "sha256 = " in text
    freezes = []
    for machine in ("a", "b"):
        built = run_cli("build", "--locked", cwd=project, **_machine(tmp_path, machine))
        assert built.returncode == 0, built.stderr
        assert "from pylock.tiny.toml" in built.stderr
        # exec NAME -- pip: the environment's own installer (uv pip), not the host's pip
        freeze = run_cli(
            "exec", "tiny", "--", "pip", "freeze", cwd=project, **_machine(tmp_path, machine)
        )
        assert freeze.returncode == 0, freeze.stderr
        freezes.append(freeze.stdout)
    assert freezes[0] == freezes[1]
    assert "six==" in freezes[0] and "pyzmq==" in freezes[0]
    host = subprocess.run(
        [sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=False
    )
    assert host.stdout != freezes[0]  # not the host's packages
    no_subcommand = run_cli(
        "exec", "tiny", "--", "pip", "--version", cwd=project, **_machine(tmp_path, "a")
    )
    assert no_subcommand.returncode == 127 and "has no pip" in no_subcommand.stderr

    # the same lock, named by another project's manifest with lock: and no requirements
    other = tmp_path / "other"
    other.mkdir()
    (other / "pylock.toml").write_text(text.replace("# envrunner", "# was envrunner"))
    (other / "environments.yaml").write_text(
        f'version: 1\nenvironments:\n  given:\n    python: "{CALLER}"\n    lock: pylock.toml\n'
    )
    given = run_cli("build", "--locked", cwd=other, **_machine(tmp_path, "b"))
    assert given.returncode == 0, given.stderr
    freeze = run_cli("exec", "given", "--", "pip", "freeze", cwd=other, **_machine(tmp_path, "b"))
    assert freeze.stdout == freezes[0]

    # hashes are checked: a lock whose hash was changed does not install
    given_text = (other / "pylock.toml").read_text()
    (other / "pylock.toml").write_text(
        re.sub('sha256 = "[0-9a-f]{64}"', 'sha256 = "' + "0" * 64 + '"', given_text)
    )
    tampered = run_cli("build", cwd=other, **_machine(tmp_path, "c"))
    assert tampered.returncode == 1
    assert "hash" in tampered.stderr.lower(), tampered.stderr


def test_a_manifest_edited_without_relocking_fails_a_locked_build(tmp_path: Path) -> None:
    project = tmp_path / "project"
    manifest = _manifest(project, ["six"])
    machine = _machine(tmp_path, "a")
    missing = run_cli("build", "--locked", cwd=project, **machine)
    assert missing.returncode == 1 and "no lock file" in missing.stderr
    assert run_cli("lock", cwd=project, **machine).returncode == 0
    _manifest(project, ["six", "msgpack<2"])
    for how in (["build", "--locked"], ["build"]):
        env = {"ENVRUNNER_LOCKED": "1"} if how == ["build"] else {}
        failed = run_cli(*how, cwd=project, **machine, **env)
        assert failed.returncode == 1, failed.stderr
        assert "pylock.tiny.toml is out of date with the manifest" in failed.stderr
        assert "requirements: added 'msgpack<2'" in failed.stderr
        assert "envrunner lock tiny" in failed.stderr
    smoke = run_cli("smoke", "--locked", cwd=project, **machine)
    assert smoke.returncode == 1 and "out of date" in smoke.stdout + smoke.stderr
    # without --locked the build goes on from the manifest, and says why
    loose = run_cli("build", cwd=project, **machine)
    assert loose.returncode == 0, loose.stderr
    assert "added 'msgpack<2'" in loose.stderr and "building from the manifest" in loose.stderr
    assert manifest.exists()
    # re-locking keeps the pins the manifest still allows (six stays where it was)
    before = (project / "pylock.tiny.toml").read_text()
    assert run_cli("lock", cwd=project, **machine).returncode == 0
    after = (project / "pylock.tiny.toml").read_text()
    six = before.split('name = "six"\nversion = "', 1)[1].split('"', 1)[0]
    assert f'name = "six"\nversion = "{six}"' in after and 'name = "msgpack"' in after
    assert run_cli("build", "--locked", cwd=project, **machine).returncode == 0


def test_relocking_keeps_pins_until_asked_to_upgrade(tmp_path: Path) -> None:
    project = tmp_path / "project"
    machine = _machine(tmp_path, "a")
    lock = project / "pylock.tiny.toml"

    def six() -> str:
        return lock.read_text().split('name = "six"\nversion = "', 1)[1].split('"', 1)[0]

    _manifest(project, ["six==1.16.0"])
    assert run_cli("lock", cwd=project, **machine).returncode == 0
    _manifest(project, ["six"])
    assert run_cli("lock", cwd=project, **machine).returncode == 0
    assert six() == "1.16.0"  # still allowed: the pin stays
    upgraded = run_cli("lock", "--upgrade-package", "six", cwd=project, **machine)
    assert upgraded.returncode == 0, upgraded.stderr
    assert six() != "1.16.0"


def _slow_project(tmp_path: Path) -> tuple[Path, Path]:
    package = make_package(tmp_path / "pkg", "slowpkg")
    project = tmp_path / "project"
    _manifest(project, [f"slowpkg @ file://{package}"])
    return project, package


def _start_build(project: Path, home: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "envrunner", "build", *args],
        cwd=project,
        env=dict(os.environ, ENVRUNNER_HOME=home, UV_NO_CACHE="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _backend_pid(package: Path, count: int) -> int:
    log = package / "builds.log"
    wait_for(lambda: log.exists() and len(log.read_text().split()) >= count, 120, "the backend")
    return int(log.read_text().split()[count - 1])


def test_ctrl_c_during_build_force_keeps_the_previous_build_in_use(tmp_path: Path) -> None:
    project, package = _slow_project(tmp_path)
    home = str(tmp_path / "home")
    first = run_cli("build", cwd=project, home=home)
    assert first.returncode == 0, first.stderr
    assert "compiling slowpkg from source (no wheel for this Python)" in first.stderr  # (#19)
    path = Path(run_cli("path", "tiny", cwd=project, home=home).stdout.strip())
    (package / "hold").touch()
    forced = _start_build(project, home, "--force")
    backend = _backend_pid(package, 2)  # the rebuild is in the middle of its install
    forced.send_signal(signal.SIGINT)
    _, err = forced.communicate(timeout=60)
    assert forced.returncode == 130, err
    assert "interrupted" in err and "build failed" not in err
    assert "previous build is still in use" in err
    wait_for(lambda: pid_gone(backend), 10, "the build backend to end")
    assert run_cli("path", "tiny", cwd=project, home=home).returncode == 0
    used = run_cli(
        "exec",
        "tiny",
        "--",
        "python",
        "-c",
        "import slowpkg, zmq; print(slowpkg.VERSION)",
        cwd=project,
        home=home,
    )
    assert used.returncode == 0 and used.stdout.strip() == "1.0", used.stderr
    (package / "hold").unlink()
    # a completed rebuild replaces it, and the folder it replaced goes
    old = path.resolve()
    again = run_cli("build", "--force", cwd=project, home=home)
    assert again.returncode == 0, again.stderr
    assert path.resolve() != old and not old.exists()
    assert sorted(p.name for p in path.parent.iterdir() if p.is_dir() and not p.is_symlink()) == [
        path.resolve().name
    ]


def test_kill_9_of_the_caller_mid_build_ends_the_installer_and_the_backend(tmp_path: Path) -> None:
    project, package = _slow_project(tmp_path)
    (package / "hold").touch()
    caller = _start_build(project, str(tmp_path / "home"))
    backend = _backend_pid(package, 1)
    os.kill(caller.pid, signal.SIGKILL)
    caller.communicate(timeout=30)
    wait_for(lambda: pid_gone(backend), 10, "the build backend to die with its caller")
    installers = subprocess.run(
        ["pgrep", "-f", f"slowpkg @ file://{package}"], capture_output=True, text=True, check=False
    )
    assert installers.stdout.strip() == "", installers.stdout


def test_gc_removes_orphaned_locks_and_old_logs_and_says_what_it_frees(tmp_path: Path) -> None:
    project = tmp_path / "project"
    _manifest(project, ["six"], name="gone")
    machine = _machine(tmp_path, "a")
    assert run_cli("lock", cwd=project, **machine).returncode == 0
    orphan = project / "pylock.gone.toml"
    _manifest(project, ["six"], name="kept")
    assert run_cli("lock", cwd=project, **machine).returncode == 0
    foreign = project / "pylock.mine.toml"  # not written by envrunner lock: never touched
    foreign.write_text('lock-version = "1.0"\n')
    logs = Path(machine["home"]) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    old, new = logs / "old-build.log", logs / "new-build.log"
    old.write_text("x" * 5000)
    new.write_text("y")
    os.utime(old, (time.time() - 30 * 86400,) * 2)
    dry = run_cli("gc", cwd=project, **machine)
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {orphan}" in dry.stdout and "no longer has" in dry.stdout
    assert f"would remove {old}" in dry.stdout and "older than 14 days" in dry.stdout
    assert str(new) not in dry.stdout and str(foreign) not in dry.stdout
    assert "pylock.kept.toml" not in dry.stdout
    assert "KB; nothing was removed" in dry.stdout
    done = run_cli("gc", "--delete", cwd=project, **machine)
    assert "freed" in done.stdout
    assert not orphan.exists() and not old.exists() and new.exists() and foreign.exists()


def test_build_messages_say_what_failed_and_count_requirements(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "environments.yaml").write_text(
        f'version: 1\nenvironments:\n  bare:\n    python: "{CALLER}"\n'
        f'  bad:\n    python: "{CALLER}"\n    requirements: ["six==0.0.99"]\n'
    )
    built = run_cli("build", cwd=project, home=tmp_path / "home")
    assert built.returncode == 1
    assert "bare: installing the worker runtime (uv)" in built.stderr
    assert "0 requirements" not in built.stderr
    assert "python exited" not in built.stderr
    assert "failed: uv stopped with exit code 1: error: No solution found" in built.stderr
    assert "there is no version of six==0.0.99" in built.stderr.split("failed:", 2)[-1]


def test_the_manifest_checks_lock_keys(write_manifest: WriteManifest) -> None:
    from envrunner import ManifestError
    from envrunner._manifest import load_manifest

    for value, message in (
        ("locks/pylock.toml", "not found"),
        ("deps.lock", "expected pylock.toml, pylock.NAME.toml or a .txt file"),
        ("plain.txt", "has no hashes"),
    ):
        path = write_manifest(f"version: 1\nenvironments:\n  e:\n    lock: {value}\n")
        (path.parent / "plain.txt").write_text("six==1.16.0\n")
        with pytest.raises(ManifestError) as caught:
            load_manifest(path)
        assert message in str(caught.value) and "environments.yaml:4" in str(caught.value)
    path = write_manifest(
        "version: 1\nenvironments:\n  e:\n    requirements: [six]\n    lock: pylock.e.toml\n"
    )
    spec = load_manifest(path)["e"]  # absent is fine when envrunner lock can write it
    assert spec.lock == path.parent / "pylock.e.toml" and not spec.external


def test_one_requirements_reader() -> None:
    assert parse("numpy>=2; python_version > '3.9'") is not None
    for line in ("./pkg", "git+https://x/y.git", "-e .", "thing-1.0.tar.gz", "# note", ""):
        assert parse(line) is None, line
    hashed = parse("six==1.16.0 --hash=sha256:abc")
    assert hashed is not None and str(hashed.specifier) == "==1.16.0"
    named_url = parse("pkg @ https://example.org/pkg-1.0.tar.gz")
    assert named_url is not None and named_url.name == "pkg"
    assert [r.name for r in named(["Six", "six>1", "numpy"])] == ["Six", "numpy"]
