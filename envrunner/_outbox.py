"""The scheduler's actions, carried out: builds, worker starts, calls sent, futures to complete.

The broker's thread hands :class:`Outbox` every action the scheduler returns (``carry``), under
the broker's lock; one table maps each kind of action to the I/O it takes. Some report back to
the scheduler (a start that failed, a call whose future was cancelled meanwhile), which may
return more actions: they are carried out in the same pass. Futures are not completed here: they
are collected in ``done`` and the broker completes them after it drops its lock.

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
from ._inputs import resolve_later
from ._runtime import wire
from ._runtime.errors import EncodeError, WorkerStartError
from ._runtime.protocol import Shutdown, Signer, pack, scope
from ._scheduler import Scheduler
from ._workers import Workers

log = logging.getLogger("envrunner.broker")

__all__ = ["Outbox"]


class Outbox:
    """Carries out the scheduler's actions.

    Args:
        scheduler, workers: The broker's decisions and its workers' I/O.
        signer: Signs every message with the session key.
        prepare: Builds (or finds) an environment; runs in a thread of its own per pool.
        command: Hands the broker's thread a command (a build's outcome).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        workers: Workers,
        signer: Signer,
        prepare: Callable[[str, threading.Event], Prepared],
        command: Callable[[Command], bool],
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
        self._actions_table: dict[type, Callable[[Any], list[sch.Action] | None]] = {
            sch.Prepare: self._do_prepare,
            sch.StopBuilds: lambda _: self.cancel_builds.set(),
            sch.Start: self._do_start,
            sch.Dispatch: self._do_dispatch,
            sch.Pump: lambda a: self.scheduler.pump(a.env, time.monotonic()),
            sch.Resolve: lambda a: resolve_later(a.ticket, self._command),
            sch.Complete: self._do_complete,
            sch.Shutdown: self._do_shutdown,
            sch.Kill: self._do_kill,
            sch.Forget: lambda a: self._workers.forget(a.ident),
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
        except OSError as exc:
            error = WorkerStartError(action.env, 0, f"cannot run {prepared.python}: {exc}")
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
        try:
            frames = pack(request.message, self._signer, scope("to", io.ident))
        except EncodeError as exc:  # too large to send: the call fails, the worker is free
            more = self.scheduler.dispatch_refused(ticket, time.monotonic())
            self._workers.free_blocks(request)
            self.done.append((sch.Complete(ticket, exc), future))
            return more
        request.sent = True
        io.lent.update((name, offset) for name, offset in request.blocks)
        io.given.append(ticket)
        try:
            wire.send(io.router, frames, (io.ident,))
        except zmq.ZMQError as exc:
            log.debug("cannot send to %r: %s", io, exc)  # gone: its exit fails the call
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

    def _do_kill(self, action: sch.Kill) -> None:
        io = self._workers.io.get(action.ident)
        if io is not None:
            io.process.kill()

    def send(self, io: WorkerIO, message: Any) -> None:
        try:
            frames = pack(message, self._signer, scope("to", io.ident))
            wire.send(io.router, frames, (io.ident,))
        except zmq.ZMQError as exc:
            # The worker is gone (EHOSTUNREACH): its exit, seen next, fails its call.
            log.debug("cannot send to %r: %s", io, exc)
