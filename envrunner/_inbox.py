"""What workers say, turned into the scheduler's events: messages, hellos, results, exits.

The broker's thread calls :class:`Inbox` when a ROUTER socket is readable (``drain``) or a
worker's process has ended (``reap``), under the broker's lock. Each message is checked first
(whose channel it came on, its signature, its protocol), then handed to the scheduler as an
event; the actions the scheduler returns go back to the broker (``carry``), which carries them
out. Replies that belong to a message (a WELCOME to a HELLO) are sent through ``send``.

May import: the standard library, zmq, ``envrunner._actions``, ``_calls``, ``_channels``,
``_process``, ``_remote``, ``_scheduler``, ``_workers``, ``_runtime``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from . import _actions as sch
from ._calls import RawResult, UndecodedError, unmapped
from ._channels import Output, WorkerIO
from ._process import RemoteProcess
from ._remote import RemoteDoor
from ._runtime import wire
from ._runtime.errors import ProtocolError, WorkerStartError, describe_exit
from ._runtime.protocol import (
    Heartbeat,
    Hello,
    Result,
    Shutdown,
    Verifier,
    Welcome,
    beat_identity,
    scope,
    unpack,
)
from ._runtime.shm import Arena, Mapper
from ._scheduler import Scheduler
from ._workers import Workers

log = logging.getLogger("envrunner.broker")

__all__ = ["Inbox"]

#: Seconds the broker waits for a worker's proof on its direct channel, after its hello (the
#: worker sends the proof first: it is there at once unless another process took the channel).
PROOF_WAIT = 2.0


class Inbox:
    """Reads and checks what workers send, and tells the scheduler.

    Args:
        scheduler, workers: The broker's decisions and its workers' I/O.
        verifier: Checks the session key's signature on every message.
        key: The session key (heartbeat sockets' identities are made with it).
        door: Where workers from other machines knock (None: none may).
        carry: Carries out actions (the broker's table).
        send: Sends a message to a worker.
        sys_path, shm_threshold, max_message, arena, mapper: What a WELCOME tells a worker, and
            the caller's shared memory.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        workers: Workers,
        verifier: Verifier,
        door: RemoteDoor | None,
        carry: Callable[[Iterable[sch.Action]], None],
        send: Callable[[WorkerIO, Any], None],
        *,
        key: bytes,
        sys_path: list[str],
        shm_threshold: int,
        max_message: int,
        arena: Arena | None,
        mapper: Mapper | None,
    ) -> None:
        self.scheduler = scheduler
        self._workers = workers
        self._verifier = verifier
        self._key = key
        self._door = door
        self._carry = carry
        self._send = send
        self._sys_path = sys_path
        self._shm_threshold = shm_threshold
        self._max_message = max_message
        self.arena = arena
        self.mapper = mapper

    def book(self, io: WorkerIO, result: Result) -> None:
        """What any answer says besides its value: blocks given back, objects kept (locked)."""
        for name, offset in result.freed:
            io.lent.discard((name, offset))
            if self.arena is not None:
                self.arena.free(name, offset)
        if result.kept:
            self.scheduler.kept(io.ident, result.kept)

    def drain(self, router: zmq.Socket[Any]) -> None:
        # (no failing receive at the end; EVENTS is an int, whatever pyzmq's types say)
        while router.getsockopt(wire.EVENTS) & wire.POLLIN:  # type: ignore[operator]
            try:
                frames = wire.receive(router, zmq.NOBLOCK)
            except zmq.Again:
                return
            identity = frames[0]
            owner, separator, _ = identity.partition(b".hb.")
            beat = bool(separator)
            io = self._workers.io.get(owner)
            if beat and io is not None and identity != beat_identity(self._key, owner):
                io = None  # a heartbeat identity not made with the key (#20)
            if io is None and self._door is not None and router is self._door.router and not beat:
                self._admit(identity, frames[1:])
                continue
            if io is None or io.router is not router:
                self._verifier.rejected += 1
                log.warning("dropped a message from an unknown peer")
                continue
            sender = owner + b".hb" if beat else identity
            try:
                message = unpack(scope("from", sender), frames[1:], self._verifier)
            except ProtocolError as exc:
                error = WorkerStartError(io.env, io.pid, str(exc), list(io.output.tail))
                self._carry(self.scheduler.incompatible(io.ident, error, time.monotonic()))
                continue
            if message is None:
                log.warning("dropped an invalid message from %r", io)
            elif isinstance(message, Heartbeat):
                self.scheduler.heartbeat(io.ident, time.monotonic())
            elif beat:
                log.warning("dropped a %s on %r's heartbeat channel", type(message).__name__, io)
            elif isinstance(message, Result):
                self._on_result(io, message)
            elif isinstance(message, Hello):
                self._on_hello(io, message)

    def _admit(self, identity: bytes, frames: list[Any]) -> None:
        """A worker from another machine says hello: make it one of its environment's."""
        assert self._door is not None
        hello = self._door.admit(identity, frames, self._verifier)
        if hello is None:
            return
        slot = self.scheduler.joined(identity, hello.env, hello.pid, time.monotonic())
        if slot is None:
            log.warning(
                "refused a worker from another machine for environment %r: not one of the "
                "runner's remote_envs",
                hello.env,
            )
            return
        process = RemoteProcess(hello.pid, hello.platform)
        io = WorkerIO(identity, hello.env, process, self._door.router, Output(hello.env, -1, -1))
        process.on_kill = lambda: self._send(io, Shutdown())
        self._workers.add(io)
        log.info("remote worker %s joined environment %r", identity.decode(), hello.env)
        self._on_hello(io, hello)

    def _on_hello(self, io: WorkerIO, hello: Hello) -> None:
        slot = self.scheduler.slots.get(io.ident)
        if slot is None or slot.state is not sch.WorkerState.STARTING:
            return
        direct = io.direct is not None and self._proved_direct(io)
        options: dict[str, Any] = {}
        if self._shm_threshold and io.direct is not None:  # shared memory on this machine only
            options["shm"] = {"owner": os.getpid(), "threshold": self._shm_threshold}
        if self._max_message > 0:
            options["max_frame"] = self._max_message  # a joined worker has no --max-message
        beat = self.scheduler.heartbeat_timeout
        if beat is not None:
            options["heartbeat"] = min(5.0, max(0.2, beat / 6))
        self._send(
            io,
            Welcome(
                env=io.env,
                cwd=os.getcwd(),
                sys_path=self._sys_path,
                caller_python=tuple(sys.version_info[:3]),  # type: ignore[arg-type]
                pickle_protocol=min(5, hello.pickle_protocol),
                options=options,
            ),
        )
        io.welcomed = True
        log.debug("%r said hello: Python %s", io, ".".join(map(str, hello.python)))
        self._carry(self.scheduler.hello(io.ident, time.monotonic(), direct=direct))

    def _proved_direct(self, io: WorkerIO) -> bool:
        """Whether the worker proved the session key on its direct channel (its first message
        there, sent before its hello); if not, the channel is closed unused and its calls go
        through the broker: whoever connected to it first was not the worker (#20)."""
        direct = io.direct
        assert direct is not None
        if direct.prove(PROOF_WAIT):
            return True
        direct.refuse()
        log.warning(
            "%r did not prove the session key on its direct channel %s (another process "
            "connected to it first?): its calls go through the broker",
            io,
            direct.address,
        )
        return False

    def _on_result(self, io: WorkerIO, result: Result) -> None:
        self._workers.drain_output(io)
        self.book(io, result)
        outcome: Any
        if result.ok:
            outcome = self._mapped(io, result)
        else:
            name = next((t.name for t in io.given if t.call_id == result.call_id), "a call")
            outcome = UndecodedError(result.payload, io.env, name, io.output.fence)
        self._carry(self.scheduler.result(io.ident, result.call_id, outcome, time.monotonic()))
        while io.given and io.given[0].state is sch.CallState.DONE:
            io.given.popleft()

    def _mapped(self, io: WorkerIO, result: Result) -> Any:
        """A value's answer, its shared memory mapped first (before the worker can go and
        unlink it); an error for the call if it cannot be (the broker goes on)."""
        if result.segments and self.mapper is not None:
            try:
                self.mapper.attach(result.segments)
            except (OSError, ValueError) as exc:
                name = next((t.name for t in io.given if t.call_id == result.call_id), "a call")
                return unmapped(name, io.env, exc)
        fence = io.output.fence  # its output is written before the value is given out
        buffers = list(result.buffers)
        return RawResult(result.payload, buffers, io.ident, io.pid, result.kept, fence)

    # ------------------------------------------------------------------ processes

    def reap(self, io: WorkerIO) -> None:
        returncode = io.process.poll()
        if returncode is None or io.ident not in self._workers.io:
            return
        if len(io.given) > 1:
            self.drain(io.router)  # answers it sent before it died settle first
        self._workers.unwatch(io)
        slot = self.scheduler.slots.get(io.ident)
        quiet = slot is not None and slot.state is sch.WorkerState.IDLE and slot.killed_for is None
        if quiet and not self.scheduler.stopping:
            log.warning(
                "worker for environment %r (pid %d) exited while idle: %s",
                io.env,
                io.pid,
                describe_exit(returncode),
            )
        log.debug("%r exited: %s", io, returncode)
        started = io.started_call()
        tail, why = list(io.output.tail), io.process.reason
        self._carry(
            self.scheduler.exited(io.ident, returncode, started, tail, time.monotonic(), why)
        )
