"""Workers on other machines: a second ROUTER on tcp, CurveZMQ, and their admission.

A runner given ``listen=`` binds it; with keys, connections are encrypted and a ZAP
authenticator lets in only the client keys in ``keys/clients/``. A worker started there by
``envrunner worker`` says hello on it and joins its environment's pool, if that environment is
one of the runner's ``remote_envs``. It has no process here (``RemoteProcess``): its liveness is
its heartbeats, and it is told to go with a SHUTDOWN.

May import: the standard library, zmq, ``envrunner._keys``, ``_process``, ``_workers``,
``_runtime``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from ._runtime.errors import ProtocolError
from ._runtime.protocol import Hello, scope, unpack
from ._workers import WorkerHandle

if TYPE_CHECKING:
    from ._broker import Broker

__all__ = ["RemoteWorkers"]

log = logging.getLogger("envrunner.broker")


class RemoteWorkers:
    """The broker's methods for workers on other machines (mixed into ``Broker``)."""

    def _listen(self: Broker, address: str, keys: Path | None) -> None:
        """Bind a second ROUTER for workers on other machines (CurveZMQ unless ``keys`` is None)."""
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.MAXMSGSIZE, self._max_message)
        if keys is not None:
            from zmq.auth.thread import ThreadAuthenticator

            from ._keys import server_keys

            public, secret = server_keys(keys)
            self._auth = ThreadAuthenticator(self._context)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(keys / "clients"))
            router.curve_secretkey = secret
            router.curve_publickey = public
            router.curve_server = True
        router.bind(address)
        self.remote_address = router.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._remote = router
        self._poller.register(router, zmq.POLLIN)

    def _admit_remote(self: Broker, identity: bytes, frames: list[Any]) -> WorkerHandle | None:
        """A worker on another machine says hello: make it one of its environment's workers."""
        from ._process import RemoteProcess

        try:
            hello = unpack(scope("from", identity), frames, self._verifier)
        except ProtocolError as exc:
            log.warning("refused a remote worker %r: %s", identity, exc)
            return None
        if not isinstance(hello, Hello) or not identity.startswith(b"r-"):
            log.warning("dropped a message from an unknown remote peer %r", identity)
            return None
        pool = self._pools.get(hello.env)
        if pool is None or pool.config.local or self._stopping:
            log.warning(
                "refused a worker from another machine for environment %r: not one of the "
                "runner's remote_envs",
                hello.env,
            )
            return None
        worker = WorkerHandle(identity, hello.env, RemoteProcess(hello.pid, hello.platform))
        worker.remote = True
        worker.out_open = worker.err_open = False  # its output stays on its machine
        self._workers[identity] = worker
        pool.workers.append(worker)
        if pool.state == "new":
            pool.state = "ready"
        log.info("remote worker %s joined environment %r", identity.decode(), hello.env)
        self._on_hello(worker, hello)
        return worker
