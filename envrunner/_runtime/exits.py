"""How a worker process ends, in words: the runtime's own exit codes, and any exit described.

May import: the standard library.

::

    75  EXIT_PARENT_GONE    a local worker's caller went away (``lifetime``)
    76  EXIT_NO_WELCOME     the broker never answered the worker's hello (``serving``)
    77  EXIT_NO_CALLER      no caller welcomed a joining worker in time (``joining``)
    < 0                     a signal: ``describe_exit`` names it and its likely cause

This module is part of the sealed worker runtime: standard library only, parses on Python 3.9.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["EXIT_NO_CALLER", "EXIT_NO_WELCOME", "EXIT_PARENT_GONE", "describe_exit"]

EXIT_PARENT_GONE = 75  # the caller went away: nothing left to serve
EXIT_NO_WELCOME = 76  # the broker never answered the hello
EXIT_NO_CALLER = 77  # no caller welcomed this worker within its start timeout

_SIGNAL_MEANINGS = {
    "SIGKILL": "killed: out of memory (the OOM killer) or by another process",
    "SIGSEGV": "a native crash (segmentation fault) in an extension module",
    "SIGBUS": "a native crash (bus error), often a truncated memory-mapped file",
    "SIGABRT": "aborted by native code (a failed assertion in C/C++)",
    "SIGFPE": "a native arithmetic error",
    "SIGILL": "an illegal instruction: a binary built for another CPU",
    "SIGTERM": "terminated by another process",
    "SIGINT": "interrupted",
}


def describe_exit(returncode: Optional[int]) -> str:
    """Name a process's exit: ``"exit code 3"``, ``"signal SIGSEGV (-11): a native crash ..."``."""
    if returncode is None:
        return "still running"
    if returncode >= 0:
        return f"exit code {returncode}"
    import signal

    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
    meaning = _SIGNAL_MEANINGS.get(name)
    text = f"signal {name} ({returncode})"
    return f"{text}: {meaning}" if meaning else text
