"""Ways to fail, for tests/test_faults.py; workers import this module (stdlib only)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


def fail(how: str) -> None:
    """Fail in the process that runs this, the way ``how`` says."""
    if how == "exception":
        raise ValueError("failed on purpose")
    if how == "sys.exit":
        sys.exit(3)
    if how == "os._exit":
        os._exit(3)
    if how == "segfault":
        ctypes.string_at(0)
    if how == "kill -9":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "hang":
        time.sleep(600)
    if how == "hang holding the GIL":
        ctypes.PyDLL(None).sleep(600)  # a foreign call that keeps the GIL: no thread can run
    raise AssertionError(f"unknown failure {how!r}")


class FailsWhenLoaded:
    """Pickles fine; fails in whatever process unpickles it."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self) -> Any:
        return (fail, (self.how,))


class FailsWhenSent:
    """Fails in whatever process pickles it."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self) -> Any:
        fail(self.how)
        raise AssertionError("not reached")


def run(how: str) -> None:
    fail(how)


def take(value: Any) -> str:
    return type(value).__name__


def give_back(how: str) -> Any:
    return FailsWhenSent(how)


def give_unloadable(how: str) -> Any:
    return FailsWhenLoaded(how)


def add(a: int, b: int) -> int:
    return a + b


def pid() -> int:
    return os.getpid()


def crash_once(marker: str) -> str:
    """Crash the first time (a native crash), succeed the next."""
    path = Path(marker)
    if not path.exists():
        path.write_text("crashed once")
        ctypes.string_at(0)
    return "survived"


def count_and_raise(counter: str) -> None:
    with open(counter, "a") as stream:
        stream.write("x")
    raise ValueError("raised on purpose")


def sleep_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def signal_and_wait(marker: str, seconds: float) -> None:
    """Tell the test (by a file) that the call runs, then work for a long time."""
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)


def leave_children() -> list[int]:
    """Start processes and return without waiting for them: a ``sleep`` with its output to
    /dev/null, and a forked copy of this process that sleeps."""
    import subprocess

    child = subprocess.Popen(
        ["sleep", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    forked = os.fork()
    if forked == 0:
        time.sleep(1000)
        os._exit(0)
    return [child.pid, forked]


def plain_value(kind: str, size: int) -> Any:
    """A plain value of about ``size`` bytes: bytes, a str, or a list of floats."""
    if kind == "bytes":
        return b"x" * size
    if kind == "str":
        return "y" * size
    return [0.5] * (size // 9)  # a float packs as 9 bytes


def measure(value: Any) -> list[Any]:
    """What arrived: its type name, length and a checksum of its ends."""
    return [type(value).__name__, len(value), repr(value[:3]), repr(value[-3:])]


def zeros(size: int) -> Any:
    """A numpy array of ``size`` zero bytes (its pages untouched until read)."""
    import numpy

    return numpy.zeros(size, dtype=numpy.uint8)


def site_packages() -> str:
    """This worker's site-packages folder."""
    import sysconfig

    return sysconfig.get_paths()["purelib"]


def shout(lines: int) -> int:
    """Print many lines (more than a pipe holds) and return how many."""
    for number in range(lines):
        print(f"line {number} of a task that talks a lot", flush=False)
    sys.stdout.flush()
    return lines


def logged(log: str, value: Any, how: str = "", seconds: float = 0.0) -> Any:
    """Write ``value`` as a line of ``log`` (a record that this call ran), then return it; or,
    when ``how`` names a failure, wait ``seconds`` and fail that way."""
    with open(log, "a") as stream:
        stream.write(f"{value}\n")
    if how:
        time.sleep(seconds)
        fail(how)
    return value
