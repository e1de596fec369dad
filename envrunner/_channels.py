"""A worker's I/O in the caller: its process, its channels, its output, what it holds.

::

    broker thread                       WorkerIO                          worker process
    ─────────────                       ────────                          ──────────────
    Start ─► launch ─────────────────►  process (the Process interface) ─► runs
    Dispatch ─► CALL on ``router`` ───────────────────────────────────────► control channel
    hello ◄── proof: a HEARTBEAT signed for ``direct``, first on it ◄────── direct channel
    calling thread ─► CALL on ``direct`` (a PAIR of its own) ─────────────► direct channel
    poll ◄── stdout/stderr fds ◄──────  Output: lines prefixed "[env] " ◄── print()
                                        lent: arena blocks its calls hold
                                        given: tickets sent to it, in order

May import: the standard library, zmq, ``envrunner._output``, ``envrunner._process``,
``envrunner._actions``, ``envrunner._runtime``.

A worker has two channels. *Control* is the broker's ROUTER socket, shared by all workers: the
handshake, calls submitted as futures, releases, shutdown. *Direct* is a PAIR socket of its own
in the caller, bound before the worker starts: a thread making a synchronous call checks the
worker out and uses this channel itself, so the call crosses two processes instead of also
waking the broker's thread twice. Whoever holds the worker (the broker for a future, a calling
thread for a direct call, nobody while it is idle) is the only one using its direct socket.

Its stdout and stderr are pipes the broker reads; lines are written to the caller's streams
prefixed with the environment's name, and the last stderr lines are kept for crash reports.
"""

from __future__ import annotations

import collections
import os
import select
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from ._output import WRITER
from ._runtime import wire
from ._runtime.errors import ProtocolError
from ._runtime.protocol import Heartbeat, Signer, Verifier, scope, unpack

if TYPE_CHECKING:
    from ._actions import Ticket
    from ._process import Process

__all__ = ["STDERR_TAIL", "DirectChannel", "Output", "WorkerIO"]

STDERR_TAIL = 30


class DirectChannel:
    """A worker's own socket in the caller, for synchronous calls made by calling threads.

    Nothing is sent on it before the worker has proved the session key on it: the worker's
    first message there is a heartbeat signed for this channel (``from:ID/direct``), which the
    broker's thread reads when the worker says hello (``prove``). A first message that is
    anything else, or none in time (whoever connected first was not the worker), makes the
    channel ``refused``: it is closed unused, and the worker's calls go through the broker.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        address: str,
        key: bytes,
        identity: bytes,
        max_message: int = -1,
        zap_domain: bytes = b"",
    ) -> None:
        self.address = address
        self.socket = context.socket(zmq.PAIR)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message)
        if zap_domain:
            self.socket.setsockopt(zmq.ZAP_DOMAIN, zap_domain)
        self.socket.bind(address)
        self.signer = Signer(key)
        self.verifier = Verifier(key)
        self.outgoing = scope("to", identity, "direct")
        self.incoming = scope("from", identity, "direct")
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)
        self.proven = False  # the worker proved the key on this channel: it may be sent to
        self.refused = False  # its first message was not that proof: never sent to

    def prove(self, wait: float) -> bool:
        """Whether the worker proved the session key on this channel, waiting up to ``wait``
        seconds for its first message (the broker's thread, before any call may use it)."""
        if self.proven or self.refused:
            return self.proven
        if not self.socket.poll(int(wait * 1000)):
            return False
        try:
            first = unpack(self.incoming, wire.receive(self.socket, zmq.NOBLOCK), self.verifier)
        except (ProtocolError, zmq.ZMQError):
            first = None
        if isinstance(first, Heartbeat):
            self.proven = True
        else:
            self.refuse()
        return self.proven

    def refuse(self) -> None:
        """Never use it: whoever is connected gets nothing, now or later."""
        self.refused = True
        self.close()

    def watch(self, pidfd: int) -> None:
        """Also wake on the worker's exit while waiting for an answer."""
        if pidfd >= 0:
            self.poller.register(pidfd, zmq.POLLIN)

    def close(self) -> None:
        if not self.socket.closed:
            self.socket.close(linger=0)


class Output:
    """A worker's stdout and stderr pipes: lines forwarded to the caller's streams with the
    environment's name in front; the last stderr lines kept for crash reports."""

    def __init__(self, env: str, stdout_fd: int, stderr_fd: int) -> None:
        self.env = env
        self.fds = {"out": stdout_fd, "err": stderr_fd}
        self.open = {"out": stdout_fd >= 0, "err": stderr_fd >= 0}
        self.partial = {"out": b"", "err": b""}
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self.lock = threading.Lock()
        self.fence = 0  # the writer's number of its last text (``_output.WRITER``)
        self._pipes: select.poll | None = None

    def read(self, kind: str) -> bool:
        """Forward what the pipe holds now; returns False once it is closed (EOF)."""
        fd = self.fds[kind]
        with self.lock:
            while True:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    return True
                except OSError:
                    data = b""
                if not data:
                    self._emit(kind, self.partial[kind], final=True)
                    return False
                self._emit(kind, self.partial[kind] + data)

    def pending(self) -> bool:
        """Whether its pipes hold output not yet forwarded (checked without reading them).

        One poll(2) on both pipes; the lock makes sure the broker is not between reading some
        output and writing it out.
        """
        with self.lock:
            if self._pipes is None:
                self._pipes = select.poll()
                for kind, fd in self.fds.items():
                    if fd >= 0 and self.open[kind]:
                        self._pipes.register(fd, select.POLLIN)
            try:
                return any(event & select.POLLIN for _, event in self._pipes.poll(0))
            except OSError:
                return False

    def _emit(self, kind: str, data: bytes, final: bool = False) -> None:
        *lines, rest = data.split(b"\n")
        if final and rest:
            lines.append(rest)
            rest = b""
        self.partial[kind] = rest
        if not lines:
            return
        stream = sys.stdout if kind == "out" else sys.stderr
        prefix = f"[{self.env}] "
        text = []
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if kind == "err":
                self.tail.append(line)
            text.append(prefix + line + "\n")
        if stream is not None:  # written by a thread of its own: a stuck stream blocks only it
            self.fence = WRITER.put(stream, "".join(text))


@dataclass(eq=False)
class WorkerIO:
    """One worker's process and channels, owned by the broker (its state is the scheduler's)."""

    ident: bytes
    env: str
    process: Process
    router: zmq.Socket[Any]  # the control channel it joined on
    output: Output
    direct: DirectChannel | None = None
    started_file: Path | None = None  # where the worker writes the id of each call it starts
    lent: set[tuple[str, int]] = field(default_factory=set)  # the caller's blocks it holds
    given: collections.deque[Ticket] = field(default_factory=collections.deque)
    releases: tuple[list[list[Any]], list[int]] = field(default_factory=lambda: ([], []))
    welcomed: bool = False

    def started_call(self) -> int:
        """The id of the last call the worker started (0: none, or no record kept)."""
        if self.started_file is None:
            return 0
        try:
            return int.from_bytes(self.started_file.read_bytes()[:8], "little")
        except OSError:
            return 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def prefix(self) -> str:
        """Its shared-memory segments' names start with this."""
        return f"envrunner-{os.getpid()}-{self.pid}"

    def __repr__(self) -> str:
        return f"<Worker env={self.env!r} pid={self.pid} id={self.ident.decode()}>"
