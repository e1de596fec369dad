"""A worker on another machine joining its caller: say what happens, stop when it cannot.

A local worker's caller is its parent, which is there by construction. A worker started with
``envrunner worker --connect ADDRESS`` may find nobody at that address, or a caller that
refuses its keys; zmq retries such connections silently for ever. While it waits for the
caller's WELCOME, :class:`Joining` watches the control socket's monitor events and says on
stderr what it sees::

    nothing listens at ADDRESS          CONNECT_RETRIED, never CONNECTED
    the caller refused this key         HANDSHAKE_FAILED_AUTH (the ZAP handler said no: the
                                        worker's public key is not in the caller's clients/)
    the handshake failed                HANDSHAKE_FAILED_NO_DETAIL / _PROTOCOL (another
                                        broker.key, or one side without CurveZMQ)
    connected, no welcome               HANDSHAKE_SUCCEEDED, then silence (another session
                                        key, or an environment not in the caller's remote_envs)

Each is said once, when first seen; if no WELCOME arrives within the start timeout the worker
says why and exits with ``EXIT_NO_CALLER``.

This module is part of the sealed worker runtime (standard library and pyzmq).
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Dict, Optional, Set

from .exits import EXIT_NO_CALLER

__all__ = ["EXIT_NO_CALLER", "Joining"]


class Joining:
    """Watches a remote worker's control socket until the caller's first message arrives.

    Create it before ``socket.connect`` (the monitor sees the connection from its start), call
    :meth:`wait` after sending HELLO, and :meth:`close` after.

    Args:
        socket: The control socket (a DEALER, CurveZMQ client unless insecure).
        address: Where it connects, for messages.
        timeout: Seconds to wait for the caller's answer.
        keys: What identifies this worker's keys, for messages (the secret key's file).
    """

    def __init__(
        self,
        socket: Any,
        address: str,
        timeout: float,
        keys: str = "",
        stream: Optional[IO[str]] = None,
    ) -> None:
        import zmq

        self.socket = socket
        self.address = address
        self.timeout = timeout
        self.keys = keys
        self.stream = stream if stream is not None else sys.stderr
        self._monitor = socket.get_monitor_socket(
            zmq.EVENT_CONNECTED
            | zmq.EVENT_CONNECT_RETRIED
            | zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
            # an address of its own: the connection watch that follows binds pyzmq's default
            # one, which may not be free again yet once this monitor is stopped
            f"inproc://envrunner-joining-{id(self)}",
        )
        self.seen: Set[str] = set()  # the kinds of event seen so far, by name

    def say(self, text: str) -> None:
        print(f"envrunner worker: {text}", file=self.stream, flush=True)

    def wait(self) -> bool:
        """Wait for a message from the caller; False (after saying why) at the timeout."""
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        self.say(f"waiting for the caller at {self.address} (giving up after {self.timeout:g} s)")
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.say(self.verdict())
                return False
            ready = dict(poller.poll(max(1, int(left * 1000))))
            if self.socket in ready:
                return True
            if self._monitor in ready:
                try:
                    event = recv_monitor_message(self._monitor, zmq.NOBLOCK)["event"]
                except zmq.Again:
                    continue
                self._on(event)

    def _on(self, event: int) -> None:
        import zmq

        names: Dict[int, str] = {
            zmq.EVENT_CONNECTED: "connected",
            zmq.EVENT_CONNECT_RETRIED: "retried",
            zmq.EVENT_HANDSHAKE_SUCCEEDED: "accepted",
            zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused",
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "failed",
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed",
        }
        name = names.get(int(event))
        if name is None or name in self.seen:
            return
        self.seen.add(name)
        if name == "refused":
            self.say(self._refused())
        elif name == "failed":
            self.say(self._failed())
        elif name == "accepted":
            self.say(f"connected to {self.address}; waiting for the caller to welcome this worker")

    def _refused(self) -> str:
        keys = f" ({self.keys})" if self.keys else ""
        return (
            f"the caller at {self.address} refused this worker's key{keys}: its public key is "
            "not in the caller's keys folder (clients/). Make the key pair with envrunner keys "
            "DIR --client NAME in the caller's keys folder and copy NAME.key_secret, broker.key "
            "and session.key here"
        )

    def _failed(self) -> str:
        return (
            f"the secure handshake with {self.address} failed: this worker's broker.key is not "
            "the caller's (copy the caller's broker.key here), or one side runs without "
            "CurveZMQ (--insecure on one side only)"
        )

    def verdict(self) -> str:
        """Why no caller welcomed this worker, from what was seen."""
        waited = f"no caller welcomed this worker within {self.timeout:g} s"
        if "refused" in self.seen:
            return f"{waited}: {self._refused()}"
        if "failed" in self.seen:
            return f"{waited}: {self._failed()}"
        if "accepted" in self.seen or "connected" in self.seen:
            return (
                f"{waited}: the connection to {self.address} was made but the caller did not "
                "answer: check that session.key is the caller's and that the environment is "
                "one of the caller's remote_envs"
            )
        return (
            f"{waited}: nothing answers at {self.address}: check that the caller is running "
            "with listen= on that address and that this machine can reach it"
        )

    def close(self) -> None:
        """Stop watching (the socket can be monitored again afterwards)."""
        try:
            self.socket.disable_monitor()
        except Exception:
            pass
        self._monitor.close(linger=0)
