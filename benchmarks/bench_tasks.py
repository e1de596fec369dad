"""Functions the benchmarks run in workers of every kind (envrunner, multiprocessing, Ray, ...).

They travel by reference, so this module must import on every Python a worker may run (3.9 and
newer) with nothing but the standard library: numpy arrays pass through ``echo`` untouched.
"""

from __future__ import annotations

import os
import time
from typing import Any


def echo(value: Any) -> Any:
    """Return the argument: a round trip of the argument there and of the result back."""
    return value


def inc(value: int) -> int:
    """One more: the item function of the ``map`` cases."""
    return value + 1


def sleep_1ms(value: Any) -> Any:
    """Sleep 1 ms, then return the argument: calls that scale with workers, not with the CPU."""
    time.sleep(0.001)
    return value


def noop() -> None:
    """Do nothing: the cost of a call with no arguments and no result."""


def pid() -> int:
    """The worker's process id."""
    return os.getpid()


def rss_kib() -> int:
    """The worker's resident set size in KiB (``VmRSS`` of ``/proc/self/status``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


class Echo:
    """The same as an actor (Ray): one long-lived object whose method echoes."""

    def echo(self, value: Any) -> Any:
        return value

    def pid(self) -> int:
        return os.getpid()
