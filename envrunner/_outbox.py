"""The scheduler's actions, carried out: builds, worker starts, calls sent, futures to complete.

The broker's thread hands :class:`Outbox` every action the scheduler returns (``carry``), under
the broker's lock; one table maps each kind of action to the I/O it takes. Some report back to
the scheduler (a start that failed, a call whose future was cancelled meanwhile), which may
return more actions: they are carried out in the same pass. Futures are not completed here: they
are collected in ``done`` and the broker completes them after it drops its lock.

Calls for one worker are packed together: while a worker has calls to run already (at least
``HOLD_BEHIND`` sent and not answered), a small call for it is held until the end of the
broker's pass (``flush``), and the calls held for it go in one CALLS message (one signature,
one send, one wake-up of the worker), in the order the scheduler dispatched them. A worker with
less to do gets its call at once (with those held before it): it never waits for the pass to
end. Anything else sent to that worker (a SHUTDOWN, a RELEASE) sends its held calls first. A
call with buffer frames or a large body goes on its own, after the ones before it::

    Dispatch(w1, c1) ─┐
    Dispatch(w1, c2) ─┼─► held for w1 ─► flush() ─► CALLS [c1, c2, c3] ─► w1
    Dispatch(w1, c3) ─┘                              (one CALL if only one)

May import: the standard library, zmq, ``envrunner._actions``, ``_calls``, ``_channels``,
``_commands``, ``_inputs``, ``_scheduler``, ``_workers``, ``_runtime``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from . import _actions as sch
from ._calls import CallRequest, Prepared
from ._channels import WorkerIO
from ._commands import Command, PrepareFailed, Ready
from ._inputs import resolve_later, resolve_now
from ._runtime import wire
from ._runtime.errors import EncodeError, WorkerStartError
from ._runtime.protocol import Call, Calls, Shutdown, Signer, call_fields, pack, scope
from ._scheduler import Scheduler
from ._workers import RunFolderFullError, Workers

log = logging.getLogger("envrunner.broker")

__all__ = ["BATCH_BYTES", "Outbox"]

#: The most bytes of code and arguments packed in one CALLS message (a call larger than a
#: quarter of it goes on its own). Small: the point is many small calls, and the batch must
#: stay under the frame limit of any worker's socket.
BATCH_BYTES = 256 * 1024
#: The most calls in one CALLS message.
BATCH_CALLS = 64
#: A call is held for the end of the pass only while the worker has at least this many calls
#: sent before it and not yet answered (it has work meanwhile); otherwise it goes at once.
HOLD_BEHIND = 2


class Outbox:
    """Carries out the scheduler's actions.

    Args:
        scheduler, workers: The broker's decisions and its workers' I/O.
        signer: Signs every message with the session key.
        prepare: Builds (or finds) an environment; runs in a thread of its own per pool.
        command: Hands the broker's thread a command (a build's outcome).
        batch_bytes: The most bytes of calls packed in one message (at most the frame limit).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        workers: Workers,
        signer: Signer,
        prepare: Callable[[str, threading.Event], Prepared],
        command: Callable[[Command], bool],
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.scheduler = scheduler
        self._workers = workers
        self._signer = signer
        self._prepare = prepare
        self._command = command
        #: Prepared environments, by name (their workers start from them).
        self.prepared: dict[str, Prepared] = {}
        #: Futures to complete once the broker drops its lock, with the action that says how.
        self.done: list[tuple[sch.Complete, Any]] = []
        #: Set to stop every build in progress (shutdown, or the caller's end).
        self.cancel_builds = threading.Event()
        #: Calls held for each worker until the end of the pass: (io, calls, their bytes).
        self._held: dict[bytes, tuple[WorkerIO, list[Call], int]] = {}
        self._batch_bytes = max(0, batch_bytes - 4096)  # room for the header's own fields
        self._actions_table: dict[type, Callable[[Any], list[sch.Action] | None]] = {
            sch.Prepare: self._do_prepare,
            sch.StopBuilds: lambda _: self.cancel_builds.set(),
            sch.Start: self._do_start,
            sch.Dispatch: self._do_dispatch,
            sch.Pump: lambda a: self.scheduler.pump(a.env, time.monotonic()),
            sch.Resolve: self._do_resolve,
            sch.Complete: self._do_complete,
            sch.Shutdown: self._do_shutdown,
            sch.Kill: self._do_kill,
            sch.Forget: self._do_forget,
            sch.Ignored: lambda a: log.warning("dropped %s from worker %r", a.why, a.ident),
        }

    def carry(self, actions: Iterable[sch.Action]) -> None:
        """Carry out the scheduler's actions (some report back, which may add more)."""
        todo = collections.deque(actions)
        while todo:
            action = todo.popleft()
            more = self._actions_table[type(action)](action)
            if more:
                todo.extend(more)

    def _do_prepare(self, action: sch.Prepare) -> None:
        def prepare() -> None:
            try:
                prepared = self._prepare(action.env, self.cancel_builds)
            except BaseException as exc:
                self._command(PrepareFailed(action.env, exc))
            else:
                self._command(Ready(action.env, prepared))

        name = f"envrunner-prepare-{action.env}"
        threading.Thread(target=prepare, name=name, daemon=True).start()

    def _do_start(self, action: sch.Start) -> list[sch.Action] | None:
        prepared = self.prepared[action.env]
        try:
            io = self._workers.launch(action.env, action.ident, prepared)
        except RunFolderFullError as exc:  # the message says which file, and what to do
            error = WorkerStartError(action.env, 0, exc.strerror or str(exc))
            return self.scheduler.start_failed(action.ident, error, time.monotonic())
        except OSError as exc:
            error = WorkerStartError(action.env, 0, f"cannot run {prepared.python}: {exc}")
            return self.scheduler.start_failed(action.ident, error, time.monotonic())
        except Exception as exc:  # what starts it refused (a launcher's own check): not fatal
            log.exception("starting a worker for environment %r failed", action.env)
            error = WorkerStartError(
                action.env,
                0,
                f"cannot start it: {exc!r}; check the environment's launcher settings in the "
                "manifest (the traceback is logged by envrunner.broker)",
            )
            return self.scheduler.start_failed(action.ident, error, time.monotonic())
        self.scheduler.launched(action.ident, io.pid, io.process.pending)
        return None

    def _do_dispatch(self, action: sch.Dispatch) -> list[sch.Action] | None:
        ticket = action.ticket
        request: CallRequest = ticket.body
        future = request.future
        if not future.running() and not future.set_running_or_notify_cancel():
            self._workers.free_blocks(request)  # cancelled while it waited
            return self.scheduler.dispatch_refused(ticket, time.monotonic())
        io = self._workers.io[action.ident]
        call: Call = request.message
        size = len(call.code) + len(call.payload) + len(call.name) + 64 * (1 + len(call.segments))
        if not call.buffers and size <= self._batch_bytes // 4:
            held = self._hold(io, call, size)
            if len(io.given) - (held - 1) < HOLD_BEHIND:
                self._send_held(io.ident)  # it has (almost) nothing left to run: no waiting
        else:
            try:
                frames = pack(call, self._signer, scope("to", io.ident))
            except EncodeError as exc:  # too large to send: the call fails, the worker is free
                more = self.scheduler.dispatch_refused(ticket, time.monotonic())
                self._workers.free_blocks(request)
                self.done.append((sch.Complete(ticket, exc), future))
                return more
            self._send_held(action.ident)  # the calls before it go first
            self._send(io, frames)
        request.sent = True
        if request.blocks:
            io.lent.update((name, offset) for name, offset in request.blocks)
        io.given.append(ticket)
        return None

    def _hold(self, io: WorkerIO, call: Call, size: int) -> int:
        """Hold ``call`` for the worker's next message; returns how many calls are held."""
        held = self._held.get(io.ident)
        if held is not None and (held[2] + size > self._batch_bytes or len(held[1]) >= BATCH_CALLS):
            self._send_held(io.ident)
            held = None
        if held is None:
            self._held[io.ident] = (io, [call], size)
            return 1
        held[1].append(call)
        self._held[io.ident] = (io, held[1], held[2] + size)
        return len(held[1])

    def flush(self) -> None:
        """Send every worker the calls held for it in this pass (the end of the broker's pass)."""
        for ident in list(self._held):
            self._send_held(ident)

    def _send_held(self, ident: bytes) -> None:
        held = self._held.pop(ident, None)
        if held is None:
            return
        io, calls, _size = held
        message: Call | Calls = (
            calls[0] if len(calls) == 1 else Calls([call_fields(c) for c in calls])
        )
        # Small calls well under the limits: pack cannot refuse them.
        self._send(io, pack(message, self._signer, scope("to", io.ident)))

    def _send(self, io: WorkerIO, frames: list[Any]) -> None:
        try:
            wire.send(io.router, frames, (io.ident,))
        except zmq.ZMQError as exc:
            log.debug("cannot send to %r: %s", io, exc)  # gone: its exit fails the call

    def _do_resolve(self, action: sch.Resolve) -> list[sch.Action] | None:
        """Every input of a call is done: their answers go in here if they can as they are
        (msgpack only), else on the inputs thread (``_inputs``)."""
        if resolve_now(action.ticket):
            return self.scheduler.resolved(action.ticket, time.monotonic())
        resolve_later(action.ticket, self._command)
        return None

    def _do_complete(self, action: sch.Complete) -> None:
        request: CallRequest = action.ticket.body
        if not request.sent:
            self._workers.free_blocks(request)
        self.done.append((action, request.future))

    def _do_shutdown(self, action: sch.Shutdown) -> None:
        io = self._workers.io.get(action.ident)
        if io is not None:
            self.send(io, Shutdown())
            io.process.told_to_go()

    def _do_forget(self, action: sch.Forget) -> None:
        """A worker is gone: calls held for it were never sent (the scheduler has put them
        back in the queue), so they must never be sent to its identity."""
        self._held.pop(action.ident, None)
        self._workers.forget(action.ident)

    def _do_kill(self, action: sch.Kill) -> None:
        self._held.pop(action.ident, None)  # never sent: the worker started none of them
        io = self._workers.io.get(action.ident)
        if io is not None:
            io.process.kill()

    def send(self, io: WorkerIO, message: Any) -> None:
        """Send a worker one message, after the calls held for it."""
        self._send_held(io.ident)
        try:
            frames = pack(message, self._signer, scope("to", io.ident))
            wire.send(io.router, frames, (io.ident,))
        except zmq.ZMQError as exc:
            # The worker is gone (EHOSTUNREACH): its exit, seen next, fails its call.
            log.debug("cannot send to %r: %s", io, exc)
