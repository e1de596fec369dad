"""Workers on other machines: a second ROUTER on tcp, CurveZMQ, and who may join.

::

    worker elsewhere ── tcp (CurveZMQ: ZAP lets in keys/clients/*.key) ──► RemoteDoor.router
    HELLO from an unknown identity ─► admit(): signed with the session key, an "r-" identity
    ─► the broker asks the scheduler to let it join its environment's pool (``remote_envs``)

A runner given ``listen=`` binds it; with keys, connections are encrypted and a ZAP
authenticator lets in only the client keys in ``keys/clients/``. The worker is started there by
``envrunner worker``; it has no process here (``RemoteProcess``): its liveness is its
heartbeats, and it is told to go with a SHUTDOWN.

May import: the standard library, zmq, ``envrunner._keys``, ``_runtime``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import zmq

from ._runtime.errors import ProtocolError
from ._runtime.protocol import Hello, Verifier, scope, unpack

__all__ = ["RemoteDoor"]

log = logging.getLogger("envrunner.broker")


class RemoteDoor:
    """The tcp ROUTER workers from other machines connect to (CurveZMQ unless ``keys`` is None)."""

    def __init__(self, address: str, keys: Path | None, max_message: int) -> None:
        # A context of its own: its ZAP authenticator (CurveZMQ keys) is not the one of the
        # broker's context (the gate of the ipc sockets, ``_gate.py``); one poller watches both.
        self._context: zmq.Context[Any] = zmq.Context()
        try:
            self._open(self._context, address, keys, max_message)
        except BaseException:
            self._context.destroy(linger=0)
            raise

    def _open(
        self, context: zmq.Context[Any], address: str, keys: Path | None, max_message: int
    ) -> None:
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.MAXMSGSIZE, max_message)
        self._auth: Any = None
        self.refused: Any = None
        if keys is not None:
            from ._keys import server_keys, start_authenticator

            public, secret = server_keys(keys)
            # Refused keys are logged (once each) on envrunner.broker.
            self._auth, self.refused = start_authenticator(context, keys)
            router.curve_secretkey = secret
            router.curve_publickey = public
            router.curve_server = True
        router.bind(address)
        self.address = router.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.router = router

    def admit(self, identity: bytes, frames: list[Any], verifier: Verifier) -> Hello | None:
        """The hello of a worker that asks to join, if it is one (signed, named ``r-...``)."""
        try:
            hello = unpack(scope("from", identity), frames, verifier)
        except ProtocolError as exc:
            log.warning("refused a remote worker %r: %s", identity, exc)
            return None
        if not isinstance(hello, Hello) or not identity.startswith(b"r-"):
            log.warning("dropped a message from an unknown remote peer %r", identity)
            return None
        return hello

    def hint(self, env: str) -> str:
        """How to start a worker of ``env`` that joins here, and which keys were refused (for
        the error of calls that waited for one in vain)."""
        hint = (
            f"; start one there with: envrunner worker {env} --connect {self.address} "
            "--keys DIR --client NAME"
        )
        refused = self.refused.summary() if self.refused is not None else ""
        return f"{hint}. {refused}" if refused else hint

    def close(self) -> None:
        self.router.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._context.term()
