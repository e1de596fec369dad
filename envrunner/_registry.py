"""The runners of this process: the ``with`` blocks' stack, the default runner, and the hooks
that end them at exit and make a forked child forget them.

The hooks are installed when the first runner is made (``register``), not at import.

May import: the standard library.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["current", "enter", "leave", "register"]


class Registered(Protocol):
    """What the registry needs of a runner."""

    _closed: bool
    _broker: Any

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, kill: bool = False
    ) -> None: ...


R = TypeVar("R", bound=Registered)

_runners: weakref.WeakSet[Any] = weakref.WeakSet()
_active: list[Any] = []
_default: list[Any] = []  # the default runner, once made
_lock = threading.RLock()
_hooks_installed = False


def register(runner: Registered) -> None:
    """A new runner: shut down at exit (the hooks installed by the first one)."""
    global _hooks_installed
    with _lock:
        _runners.add(runner)
        if _hooks_installed:
            return
        _hooks_installed = True
    atexit.register(_shutdown_all)
    os.register_at_fork(after_in_child=_forget_after_fork)


def current(make_default: Callable[[], R]) -> R:
    """The innermost ``with`` block's runner, else the default one (made when missing or shut
    down)."""
    with _lock:
        if _active:
            runner: R = _active[-1]
            return runner
        if not _default or _default[0]._closed:
            _default[:] = [make_default()]
        made: R = _default[0]
        return made


def enter(runner: Registered) -> None:
    with _lock:
        _active.append(runner)


def leave(runner: Registered) -> None:
    with _lock:
        if runner in _active:
            _active.remove(runner)


def _shutdown_all() -> None:
    """At exit: wait for running calls, unless the program is dying of an error or Ctrl-C."""
    failing = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    for runner in list(_runners):
        try:
            runner.shutdown(wait=True, cancel_futures=failing is not None, kill=failing is not None)
        except (Exception, KeyboardInterrupt):
            pass


def _forget_after_fork() -> None:
    """A forked child has no broker thread: it must not use its parent's runners."""
    _default.clear()
    _active.clear()
    for runner in list(_runners):
        runner._closed = True
        runner._broker = None
