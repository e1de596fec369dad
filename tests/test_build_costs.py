"""What a build's cheaper steps (#14) must still do: no installer outlives it, no replaced
build lies around, and the package list says what importlib.metadata would.

Each build step runs under a small watcher process (``_build_steps._WATCHER``) in a process
group of its own; when the caller is killed, the watcher's end of a pipe closes and it kills
the group, installer and all. The watcher imports only built-in modules (#14: it starts once
per step of every build). A build that replaces another (``build --force``) moves the old one
out of ``envs/`` at once and removes it in the background (#14).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from localpkg import make_package
from support import run_cli, wait_for


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_killing_the_caller_kills_the_installer_it_started(tmp_path: Path) -> None:
    package = make_package(tmp_path / "pkg", "watchedpkg")
    manifest = tmp_path / "environments.yaml"
    manifest.write_text(
        f'version: 1\nenvironments:\n  env:\n    requirements: ["watchedpkg @ file://{package}"]\n'
    )
    (package / "hold").touch()  # the package's build waits while this file exists
    build = subprocess.Popen(
        [sys.executable, "-m", "envrunner", "build", "-m", str(manifest)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "ENVRUNNER_HOME": str(tmp_path / "home")},
    )
    try:
        wait_for(lambda: (package / "started").exists(), 120, "the installer to start")
        (watcher,) = _children(build.pid)  # the step's watcher, leading a group of its own
        assert os.getpgid(watcher) == watcher
        build.kill()  # the caller alone: the group is not signalled by anyone else
        build.wait(30)
        wait_for(lambda: not _group_alive(watcher), 30, "the installer's group to be killed")
    finally:
        (package / "hold").unlink(missing_ok=True)
        if build.poll() is None:
            build.kill()
            build.wait(30)


def test_a_step_reports_the_installers_exit_code_and_output(tmp_path: Path) -> None:
    from envrunner._build_steps import _WATCHER

    def watch(*argv: str) -> subprocess.CompletedProcess[str]:
        read_fd, write_fd = os.pipe()
        try:
            return subprocess.run(
                [sys.executable, "-I", "-S", "-c", _WATCHER, str(read_fd), *argv],
                pass_fds=(read_fd,),
                start_new_session=True,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        finally:
            os.close(read_fd)
            os.close(write_fd)

    for argv, code in (([sys.executable, "-c", "import sys; sys.exit(3)"], 3), (["true"], 0)):
        done = watch(*argv)
        assert done.returncode == code, done.stderr
    missing = watch("no-such-installer-here")
    assert missing.returncode == 127
    assert "error: cannot run no-such-installer-here" in missing.stderr


def test_a_forced_rebuild_removes_the_build_it_replaced(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (tmp_path / "environments.yaml").write_text(
        "version: 1\nenvironments:\n  bare:\n    requirements: []\n"
    )
    first = run_cli("build", cwd=tmp_path, home=home)
    assert first.returncode == 0, first.stderr
    link = home / "envs" / next(p.name for p in (home / "envs").iterdir() if p.is_symlink())
    old = link.resolve()
    again = run_cli("build", "--force", cwd=tmp_path, home=home)
    assert again.returncode == 0, again.stderr
    assert link.resolve() != old and not old.exists()  # out of envs/ when the build returns
    builds = [p for p in (home / "envs").iterdir() if p.is_dir() and not p.is_symlink()]
    assert builds == [link.resolve()]
    trash = home / "trash"
    wait_for(lambda: not any(trash.iterdir()), 60, "the replaced build to be removed")


def test_the_package_list_is_what_importlib_metadata_finds() -> None:
    from importlib import metadata

    from envrunner._records import packages

    python = Path(sys.executable)  # this virtualenv: dist-info folders and an editable install
    where = subprocess.run(
        [str(python), "-I", "-c", "import sys; print('\\n'.join(sys.path))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    folders = [p for p in where.splitlines() if p and Path(p).is_dir()]
    expected = {
        (str(dist.metadata["Name"]), str(dist.version), dist.read_text("INSTALLER") or "")
        for dist in metadata.distributions(path=folders)
        if dist.metadata["Name"]
    }
    listed = packages("tests", python)
    assert listed == sorted(expected)
    assert any(name == "pyzmq" for name, _, _ in listed)
