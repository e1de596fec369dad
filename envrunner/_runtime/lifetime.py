"""How a worker process lives and dies: its key, its caller, what its tasks leave behind.

- A local worker reads the session key from an inherited socket (one end of a socketpair)
  and then blocks reading it in a thread: end of file means the caller is gone (whatever
  killed it), and the worker exits at once.
- A worker on another machine reads the key from a file only its owner can read, and exits
  when zmq reports its connection to the caller lost.
- A local worker leads its own process group (its caller starts it in a new session); when it
  exits, it kills the rest of the group: processes its tasks started and left running. A
  process that left the group (``setsid``, ``start_new_session=True``) escapes.

This module is part of the sealed worker runtime (standard library and pyzmq).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from .exits import EXIT_PARENT_GONE
from .protocol import KEY_BYTES

__all__ = [
    "EXIT_PARENT_GONE",
    "end_group",
    "read_key",
    "read_key_file",
    "watch_connection",
    "watch_parent",
]


def read_key(fd: int) -> bytes:
    key = b""
    while len(key) < KEY_BYTES:
        chunk = os.read(fd, KEY_BYTES - len(key))
        if not chunk:
            os._exit(EXIT_PARENT_GONE)
        key += chunk
    return key


def read_key_file(path: str) -> bytes:
    """The session key from a file only its owner can read (a worker on another machine)."""
    info = os.stat(path)
    if info.st_mode & 0o077:
        print(f"envrunner worker: {path} is readable by others; chmod 600 it", file=sys.stderr)
        raise SystemExit(2)
    with open(path) as stream:
        return bytes.fromhex(stream.read().strip())


def watch_connection(socket: Any, leaving: threading.Event) -> threading.Thread:
    """A worker on another machine exits when it loses its broker (no parent pipe to watch)."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    monitor = socket.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_MONITOR_STOPPED)

    def watch() -> None:
        try:
            while True:
                event = recv_monitor_message(monitor)["event"]
                if event == zmq.EVENT_MONITOR_STOPPED or leaving.is_set():
                    return
                if event == zmq.EVENT_DISCONNECTED:
                    os._exit(EXIT_PARENT_GONE)
        except zmq.ZMQError:
            return
        finally:
            monitor.close(linger=0)

    thread = threading.Thread(target=watch, name="envrunner-connection-watch", daemon=True)
    thread.start()
    return thread


def watch_parent(fd: int) -> None:
    """Exit the moment the caller's end of the key socket closes (the caller died or left)."""

    def watch() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        end_group()
        os._exit(EXIT_PARENT_GONE)

    threading.Thread(target=watch, name="envrunner-parent-watch", daemon=True).start()


def end_group() -> None:
    """SIGKILL every other process of this worker's process group: what its tasks started and
    left running (``Popen``, ``os.fork``). Only a worker that leads its group does this (local
    workers start in a session of their own); a process that left the group (``setsid``,
    ``start_new_session=True``) escapes."""
    me = os.getpid()
    try:
        if os.getpgrp() != me:
            return
        names = os.listdir("/proc")
    except OSError:
        names = []
    if not names:  # no /proc (macOS): the group gets a SIGTERM that this process ignores
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.killpg(me, signal.SIGTERM)
        except (OSError, ValueError):
            pass
        return
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stream:
                stat = stream.read()
            group = int(stat[stat.rindex(b")") + 2 :].split()[2])
            if group == me:
                os.kill(int(name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue
