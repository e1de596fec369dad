"""Waiting on real state with a deadline, never a fixed sleep: shared by the test modules."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


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
