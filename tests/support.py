"""What several test modules need: the command line run as a user runs it, waiting on real
state with a deadline (never a fixed sleep), and a small real filesystem to fill."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

T = TypeVar("T")


class WriteManifest(Protocol):
    """The ``write_manifest`` fixture: writes a manifest (dedented) and returns its path."""

    def __call__(self, text: str, name: str = "environments.yaml") -> Path: ...


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def pid_gone(pid: int) -> bool:
    """The process has exited (and been reaped, or is not ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def alive(pid: int) -> bool:
    return not pid_gone(pid)


def wait_for_file(path: Path, timeout: float = 20.0) -> None:
    wait_for(path.exists, timeout, f"{path} to appear")


def run_cli(
    *args: str, cwd: Path | None = None, home: str | Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m envrunner ARGS`` in a new process (optionally with its own home)."""
    environ = dict(os.environ, **env)
    if home is not None:
        environ["ENVRUNNER_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "envrunner", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environ,
        timeout=300,
        check=False,
    )


def make_keys(folder: Path, client: str) -> subprocess.CompletedProcess[str]:
    """``envrunner keys FOLDER --client NAME``, which must succeed."""
    result = run_cli("keys", str(folder), "--client", client)
    assert result.returncode == 0, result.stderr
    return result


@contextmanager
def small_tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``folder`` (made here) with mount ``options`` (``size=1M``), for a
    disk that really fills; skips the test where it cannot be mounted (not root)."""
    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
