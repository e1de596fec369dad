"""The caller's view of one worker: its process, its channels, its output, what it holds.

May import: the standard library, zmq, ``envrunner._process``, ``envrunner._runtime``.

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from ._runtime.protocol import Signer, Verifier, scope

if TYPE_CHECKING:
    from ._calls import PendingCall
    from ._process import RemoteProcess, WorkerProcess

__all__ = ["STDERR_TAIL", "DirectChannel", "WorkerHandle"]

STDERR_TAIL = 30


class DirectChannel:
    """A worker's own socket in the caller, for synchronous calls made by calling threads."""

    def __init__(
        self,
        context: zmq.Context[Any],
        address: str,
        key: bytes,
        identity: bytes,
        max_message: int = -1,
    ) -> None:
        self.address = address
        self.socket = context.socket(zmq.PAIR)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message)
        self.socket.bind(address)
        self.signer = Signer(key)
        self.verifier = Verifier(key)
        self.outgoing = scope("to", identity, "direct")
        self.incoming = scope("from", identity, "direct")
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)

    def watch(self, pidfd: int) -> None:
        """Also wake on the worker's exit while waiting for an answer."""
        if pidfd >= 0:
            self.poller.register(pidfd, zmq.POLLIN)

    def close(self) -> None:
        self.socket.close(linger=0)


@dataclass(eq=False)
class WorkerHandle:
    """One worker process: its state (guarded by the broker's lock), output and holdings.

    States: ``starting`` (until its hello), ``idle``, ``busy`` (a call through the broker),
    ``direct`` (checked out by a calling thread), ``stopping`` (told to go, or killed), ``dead``.
    """

    identity: bytes
    env: str
    process: WorkerProcess | RemoteProcess
    direct: DirectChannel | None = None
    remote: bool = False  # on another machine, connected over tcp
    state: str = "starting"
    call: PendingCall | None = None  # the call it runs now
    ahead: collections.deque[PendingCall] = field(
        default_factory=collections.deque
    )  # sent, waiting
    started: float = field(default_factory=time.monotonic)
    idle_since: float = field(default_factory=time.monotonic)
    last_beat: float = field(default_factory=time.monotonic)
    calls: int = 0
    killed_for: str = ""
    in_direct_call: bool = False  # a calling thread uses its direct channel and pidfd
    lent: set[tuple[str, int]] = field(default_factory=set)  # the caller's blocks it holds
    kept: set[int] = field(default_factory=set)  # ids of objects it keeps for the caller
    pinned: collections.deque[PendingCall] = field(default_factory=collections.deque)
    releases: tuple[list[list[Any]], list[int]] = field(default_factory=lambda: ([], []))
    out_open: bool = True
    err_open: bool = True
    partial: dict[str, bytes] = field(default_factory=lambda: {"out": b"", "err": b""})
    tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=STDERR_TAIL)
    )
    output_lock: threading.Lock = field(default_factory=threading.Lock)
    _pipes: select.poll | None = None
    started_file: Path | None = None  # where the worker writes the id of each call it starts

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

    @property
    def live(self) -> bool:
        return self.state in ("starting", "idle", "busy", "direct")

    def __repr__(self) -> str:
        return f"<Worker env={self.env!r} pid={self.pid} {self.state} calls={self.calls}>"

    # ------------------------------------------------------------------ output

    def fd(self, kind: str) -> int:
        return self.process.stdout_fd if kind == "out" else self.process.stderr_fd

    def read(self, kind: str) -> bool:
        """Forward what the pipe holds now; returns False once it is closed (EOF)."""
        fd = self.fd(kind)
        with self.output_lock:
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

    def pending_output(self) -> bool:
        """Whether its pipes hold output not yet forwarded (checked without reading them).

        One poll(2) on both pipes; the lock makes sure the broker is not between reading some
        output and writing it out.
        """
        with self.output_lock:
            if self._pipes is None:
                self._pipes = select.poll()
                for fd in (self.process.stdout_fd, self.process.stderr_fd):
                    if fd >= 0:
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
        if stream is not None:
            try:
                stream.write("".join(text))
                stream.flush()
            except (OSError, ValueError):
                pass  # the caller closed its stream: nothing to show the output on
