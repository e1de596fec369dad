"""Commands: what calling threads hand the broker's thread, as small typed records.

::

    calling thread ─► Broker._command(record) ─► deque + one wake byte ─► broker thread
                      ─► one handler per record type (``Broker._commands_table``)

May import: the standard library, ``envrunner._actions``, ``_calls``.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._actions import Action, Failed, Ticket
from ._calls import Prepared

__all__ = [
    "Cancel",
    "Carry",
    "Command",
    "Drain",
    "InputDone",
    "Mailbox",
    "PrepareFailed",
    "Ready",
    "ReleaseHeld",
    "ResolveFailed",
    "Resolved",
    "Stop",
    "Submit",
]


@dataclass(frozen=True)
class Submit:
    ticket: Ticket


@dataclass(frozen=True)
class Cancel:
    ticket: Ticket


@dataclass(frozen=True)
class Ready:
    env: str
    prepared: Prepared


@dataclass(frozen=True)
class PrepareFailed:
    env: str
    error: BaseException


@dataclass(frozen=True)
class Stop:
    cancel: bool
    kill: bool = False


@dataclass(frozen=True)
class ReleaseHeld:
    target: str | bytes  # a segment name (its prefix names the worker) or a worker's identity
    blocks: list[Any]
    refs: list[int]


@dataclass(frozen=True)
class Carry:
    """Actions the scheduler returned to a calling thread, for the broker to carry out."""

    actions: list[Action]


@dataclass(frozen=True)
class InputDone:
    """A future among a call's arguments is done (``failed``: how it failed)."""

    ticket: Ticket
    failed: Failed | None


@dataclass(frozen=True)
class Resolved:
    """A call made again with its inputs' values (``_inputs.py``): its message, the arena blocks
    it lends, the worker it is pinned to; it can be sent."""

    ticket: Ticket
    message: Any
    blocks: list[list[Any]]
    pin: bytes | None
    pinned_what: str


@dataclass(frozen=True)
class ResolveFailed:
    ticket: Ticket
    error: BaseException


@dataclass(frozen=True)
class Drain:
    ident: bytes
    done: threading.Event


Command = (
    Submit
    | Cancel
    | Ready
    | PrepareFailed
    | Stop
    | ReleaseHeld
    | Carry
    | Drain
    | InputDone
    | Resolved
    | ResolveFailed
)


class Mailbox:
    """Commands for the broker's thread: a deque, and a pipe its poll wakes on."""

    def __init__(self) -> None:
        self._commands: collections.deque[Command] = collections.deque()
        self.fd, self._wake = os.pipe()  # the broker polls ``fd``
        self._lock = threading.Lock()
        #: The thread that takes the commands: what it puts needs no wake-up (it takes what
        #: waits before it polls again: :meth:`waiting`).
        self.owner: int | None = None
        os.set_blocking(self.fd, False)
        os.set_blocking(self._wake, False)

    def put(self, command: Command) -> bool:
        """Hand the broker thread a command; False once the broker is gone."""
        with self._lock:
            if self._wake < 0:
                return False  # the runner refuses calls before that happens
            self._commands.append(command)
            if len(self._commands) > 1 or threading.get_ident() == self.owner:
                # Not the first waiting: whoever queued the first woke the broker, which takes
                # commands until the deque is empty (a write here costs ~15 us per submit).
                # Or the broker's own thread (a future's done-callback): it looks before it
                # polls again.
                return True
            try:
                os.write(self._wake, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already: the broker will drain the deque
            return True

    def waiting(self) -> bool:
        """Whether commands wait (the broker's thread, before it polls)."""
        return bool(self._commands)

    def take(self) -> Iterator[Command]:
        """The commands waiting now, in order (the broker's thread)."""
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass
        while self._commands:
            yield self._commands.popleft()

    def leftovers(self) -> Iterator[Command]:
        """Commands never taken (the broker is going away)."""
        while self._commands:
            yield self._commands.popleft()

    def close(self) -> None:
        with self._lock:
            os.close(self.fd)
            os.close(self._wake)
            self.fd = self._wake = -1
