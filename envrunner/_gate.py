"""The door of the caller's ipc sockets: only this process's own children get a connection.

::

    peer connects to ipc://RUNDIR/broker or RUNDIR/dN
      └─ libzmq's handshake asks the ZAP handler (inproc://zeromq.zap.01 of the broker's context)
         with the peer's credentials ("localhost:UID:GID:PID", from SO_PEERCRED)
            LocalGate thread: PID is this process or a child of it (a worker we started) ─► 200
                              anything else ─► 400: libzmq closes the connection; not one of its
                              messages is read, so it cannot claim a worker's identity, and it
                              costs the caller no more than libzmq's handshake buffers

The session key still guards every message (a child of the caller that is not a worker is the
user's own code). Where the peer's pid is not known (no SO_PEERCRED: macOS) or parents cannot be
read (no /proc), every peer is let in and the signatures alone keep strangers out. Sockets opt
in by setting ``ZAP_DOMAIN``.

May import: the standard library, zmq.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import zmq

__all__ = ["DOMAIN", "LocalGate", "raise_open_files_limit"]

log = logging.getLogger("envrunner.broker")

#: The ZAP domain of the caller's own ipc sockets.
DOMAIN = b"envrunner-local"
_ENDPOINT = "inproc://zeromq.zap.01"


def parent_of(pid: int) -> int:
    """The parent pid of ``pid`` (-1: it is gone, or there is no /proc to ask)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            stat = stream.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


#: The most open files the runner asks for (an unlimited hard limit is not taken whole).
OPEN_FILES = 1 << 20


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; the limit now.

    libzmq aborts the process when it cannot accept a connection (EMFILE), so that every
    connection another process opens to the runner's sockets, refused or not, costs one of
    the caller's descriptors until it is closed; at a soft limit of 1,024 about a thousand of
    them aborted the caller. Workers inherit the raised limit.
    """
    try:
        import resource
    except ImportError:  # not on this platform
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the limit of open files to %d: %s", target, exc)
    return int(soft)


class LocalGate:
    """A ZAP handler in a thread of its own: admits this process and its children.

    Args:
        context: The context whose sockets it guards (one ZAP handler per context).
    """

    def __init__(self, context: zmq.Context[Any]) -> None:
        self.refused = 0  # connections turned away
        self._me = os.getpid()
        # Parents are read in /proc: without it (not Linux), nobody can be told apart.
        self._can_tell = parent_of(self._me) > 0
        self._stop = threading.Event()
        self._socket = context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(_ENDPOINT)
        self._thread = threading.Thread(target=self._serve, name="envrunner-gate", daemon=True)
        self._thread.start()

    def admits(self, address: str) -> bool:
        """Whether the peer whose ZAP address is ``address`` may connect."""
        parts = address.split(":")
        if len(parts) != 4 or not parts[3].isdigit() or not self._can_tell:
            return True  # its pid is unknown here: the signatures alone decide
        pid = int(parts[3])
        if int(parts[1]) != os.getuid():
            return False
        return pid == self._me or parent_of(pid) == self._me

    def close(self) -> None:
        """Stop the thread (before the context is terminated)."""
        self._stop.set()
        self._thread.join(5)

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._socket.poll(100):
                    continue
                request = self._socket.recv_multipart()
                self._socket.send_multipart(self._answer(request))
        except zmq.ZMQError as exc:  # the context is going away
            log.debug("the ipc gate stopped: %s", exc)
        finally:
            self._socket.close(linger=0)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        version, sequence = request[0], request[1] if len(request) > 1 else b""
        if len(request) < 6:
            return [version, sequence, b"500", b"malformed ZAP request", b"", b""]
        domain, address = request[2], request[3].decode("utf-8", "replace")
        if domain == DOMAIN and not self.admits(address):
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning(
                    "refused %d connection(s) to the runner's sockets from processes it did "
                    "not start (last: %s)",
                    self.refused,
                    address,
                )
            return [version, sequence, b"400", b"not a process of this runner", b"", b""]
        return [version, sequence, b"200", b"OK", b"", b""]
