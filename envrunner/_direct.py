"""The direct path: a thread making a synchronous call runs it on a worker it checked out.

::

    calling thread                                        worker
    ──────────────                                        ──────
    scheduler.checkout(ticket) ── under the broker's lock: an idle worker, now DIRECT
    CALL on the worker's own channel ────────────────────► runs it
    wait on that channel and the worker's pidfd ◄───────── RESULT
    scheduler.answered_direct: IDLE again (or SHUTDOWN on this channel at max_calls);
    what it returns for the broker (calls waited meanwhile) is posted to the broker thread;
    make sure its output came first; decode in this thread

No broker thread is woken on the way: the call crosses two processes, not four thread hops.
The broker still supervises the worker: if it dies, or runs out of time (the calling thread
kills it), the broker reaps it and the scheduler fails the call with the error that says why,
and the calling thread raises that. While a thread holds a worker, only that thread uses its
channel; the worker's I/O is freed only after the thread let go.

May import: the standard library, ``envrunner._calls``, ``_channels``, ``_output``,
``_actions``, ``_scheduler``, ``_runtime``.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from . import _actions as sch
from ._calls import CallRequest, RawResult, UndecodedError, unmapped
from ._channels import DirectChannel, WorkerIO
from ._output import WRITER
from ._runtime import wire
from ._runtime.errors import EncodeError
from ._runtime.protocol import Result, Shutdown, pack, unpack
from ._runtime.shm import Mapper
from ._scheduler import Scheduler

__all__ = ["OUTPUT_WAIT", "DirectPath", "Host"]

#: Seconds a result waits for the output before it to be written (a stream nobody reads).
OUTPUT_WAIT = 5.0


class Host(Protocol):
    """What the direct path needs of the broker."""

    lock: threading.RLock
    scheduler: Scheduler
    mapper: Mapper | None

    def worker_io(self, ident: bytes) -> WorkerIO: ...
    def book(self, io: WorkerIO, result: Result) -> None: ...
    def post(self, actions: list[sch.Action]) -> None: ...
    def drain(self, ident: bytes, timeout: float) -> None: ...
    def forget(self, ident: bytes) -> None: ...


class DirectPath:
    """Synchronous calls run by the calling thread on an idle worker."""

    def __init__(self, host: Host) -> None:
        self._host = host

    def run(self, ticket: sch.Ticket) -> RawResult | None:
        """Run ``ticket`` on an idle worker in this thread; None if none is idle now (the call
        then goes through the broker).

        Raises:
            Whatever the call raised (decoded by the future), ``TaskTimeoutError``,
            ``WorkerCrashed``, ``KeyboardInterrupt`` (the worker is stopped first).
        """
        host = self._host
        request: CallRequest = ticket.body
        with host.lock:
            slot = host.scheduler.checkout(ticket, time.monotonic())
            if slot is None:
                return None
            io = host.worker_io(slot.ident)
            request.sent = True
            if request.blocks:
                io.lent.update((name, offset) for name, offset in request.blocks)
            io.given.append(ticket)
        direct = io.direct
        assert direct is not None
        try:
            frames = pack(request.message, direct.signer, direct.outgoing)
        except EncodeError:  # too large to send: the worker goes back, the error is the call's
            with host.lock:
                host.post(host.scheduler.answered_direct(io.ident, ticket, time.monotonic()))
                io.given.clear()
            raise
        request.future.set_running_or_notify_cancel()
        deadline = None if ticket.timeout is None else time.monotonic() + ticket.timeout
        try:
            wire.send(direct.socket, frames)
            result = self._wait(io, direct, ticket, deadline)
        except KeyboardInterrupt:
            self._kill(io, sch.KillReason.INTERRUPTED)
            self._let_go(io, ticket)
            raise
        if result is None:  # it died or ran out of time: the scheduler's error says which
            self._let_go(io, ticket)
            value: RawResult = request.future.result()
            return value
        return self._give_back(io, ticket, result)

    def _wait(
        self,
        io: WorkerIO,
        direct: DirectChannel,
        ticket: sch.Ticket,
        deadline: float | None,
    ) -> Result | None:
        watching_exit = io.process.pidfd >= 0
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not watching_exit:
                wait = 0.1 if wait is None else min(wait, 0.1)
            events = dict(direct.poller.poll(None if wait is None else int(wait * 1000)))
            if direct.socket in events:
                message = unpack(direct.incoming, wire.receive(direct.socket), direct.verifier)
                if isinstance(message, Result) and message.call_id == ticket.call_id:
                    return message
                continue
            if events or io.process.poll() is not None:
                return None  # the worker exited: the broker reaps it and fails the call
            if deadline is not None and time.monotonic() >= deadline:
                self._kill(io, sch.KillReason.TIMEOUT)
                return None

    def _kill(self, io: WorkerIO, reason: sch.KillReason) -> None:
        with self._host.lock:
            for action in self._host.scheduler.kill(io.ident, reason):
                if isinstance(action, sch.Kill):
                    io.process.kill()

    def _let_go(self, io: WorkerIO, ticket: sch.Ticket) -> None:
        """This thread is done with the worker's channel (its I/O is freed if it died)."""
        host = self._host
        with host.lock:
            for action in host.scheduler.let_go(io.ident, ticket.call_id):
                if isinstance(action, sch.Forget):
                    host.forget(action.ident)

    def _give_back(self, io: WorkerIO, ticket: sch.Ticket, result: Result) -> RawResult:
        """Book a direct call's answer and return the worker to its pool."""
        host = self._host
        later: list[sch.Action] = []
        with host.lock:
            host.book(io, result)
            for action in host.scheduler.answered_direct(io.ident, ticket, time.monotonic()):
                if isinstance(action, sch.Shutdown):
                    direct = io.direct
                    assert direct is not None
                    wire.send(direct.socket, pack(Shutdown(), direct.signer, direct.outgoing))
                else:
                    later.append(action)
            io.given.clear()
        if later:
            host.post(later)
        if io.output.pending():
            host.drain(io.ident, 5.0)
        WRITER.wait(io.output.fence, OUTPUT_WAIT)  # its output first (never for long)
        if not result.ok:
            raise UndecodedError(result.payload, io.env, ticket.name)
        if result.segments and host.mapper is not None:
            try:
                host.mapper.attach(result.segments)
            except (OSError, ValueError) as exc:
                raise unmapped(ticket.name, io.env, exc) from None
        return RawResult(result.payload, list(result.buffers), io.ident, io.pid, result.kept)
