"""The broker: one thread in the caller that owns the sockets and carries out the scheduler.

::

    caller threads                 broker thread                                   workers
    ──────────────                 ─────────────                                   ───────
    Runner.submit()                poll(ROUTER, wake pipe, output pipes, pidfds,
      encode args, Ticket               next deadline of the scheduler)
      Submit ──► commands ───────► scheduler.submit ─► actions:
      (deque) + wake byte            Prepare ─► prepare thread (build) ─► Prepared command
                                     Start ─► Launcher.launch ─────────────► process + key
                                   HELLO ◄──────────────────────────────────────────────────
                                   WELCOME ─► scheduler.hello ─► Dispatch ─► CALL ─────────►
    Future.result() ◄─ Complete ◄─ scheduler.result ◄─ RESULT ◄─────────────────────────────
      decode value or error        (futures completed after the lock is dropped)
    Task(...)  (synchronous)
      DirectPath: checkout, CALL on the worker's own channel, answer; no broker thread woken
                                   output pipe ─► "[env] line" on the caller's streams
                                   HEARTBEAT ─► scheduler.heartbeat
                                   pidfd readable ─► answers and output read first ─►
                                       scheduler.exited ─► Complete (WorkerCrashed), Forget
                                   clock ─► scheduler.tick ─► Kill, Shutdown, Complete

Every decision is the scheduler's (``_scheduler.py``); this module only does I/O: it turns
commands, messages, pipe output, exits and the clock into the scheduler's events, and carries
out the actions it returns, each through one table (``_COMMANDS``, ``_ACTIONS``). Workers are
known through the :class:`~envrunner._process.Process` interface alone. State shared with
calling threads (the scheduler) is guarded by one lock, which the broker thread holds while it
works and drops while it polls.

May import: the standard library, zmq, ``envrunner._calls``, ``_channels``, ``_commands``,
``_direct``, ``_process``, ``_remote``, ``_actions``, ``_scheduler``, ``_workers``, ``_runtime``.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import zmq

from . import _actions as sch
from ._calls import CallRequest, Prepared, RawResult, UndecodedError
from ._channels import Output, WorkerIO
from ._commands import (
    Cancel,
    Carry,
    Command,
    Drain,
    Mailbox,
    PrepareFailed,
    Ready,
    ReleaseHeld,
    Stop,
    Submit,
)
from ._direct import DirectPath
from ._process import Launcher, LocalLauncher, RemoteProcess
from ._remote import RemoteDoor
from ._runtime import wire
from ._runtime.errors import EncodeError, EnvrunnerError, ProtocolError, WorkerStartError
from ._runtime.protocol import (
    KEY_BYTES,
    Heartbeat,
    Hello,
    Release,
    Result,
    Shutdown,
    Signer,
    Verifier,
    Welcome,
    pack,
    scope,
    unpack,
)
from ._runtime.shm import Arena, Mapper, unlink_owned
from ._scheduler import SHUTDOWN_GRACE, Scheduler
from ._workers import Workers

log = logging.getLogger("envrunner.broker")

__all__ = ["Broker"]


class Broker:
    """Owns the ROUTER socket and the workers' I/O; runs in its own thread.

    Args:
        scheduler: The decisions (pools, workers, calls).
        prepare: Builds (or finds) an environment; runs in a thread of its own per pool.
        runtime_root: The sealed runtime copy a prepared environment's workers start from.
        sys_path: The caller's project folders, for the workers' import path.
        rundir: The private folder of the sockets.
        launcher: Starts worker processes.
        arena, mapper, shm_threshold: The caller's shared memory (see ``_runtime/shm.py``).
        max_message: The largest frame a socket accepts.
        key: The session key (made here when None).
        listen, keys, launchers: Workers from other machines (``_remote.py``, ``_launchers.py``).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        prepare: Callable[[str, threading.Event], Prepared],
        runtime_root: Callable[[], Path],
        sys_path: list[str],
        *,
        rundir: Path,
        launcher: Launcher | None = None,
        arena: Arena | None = None,
        mapper: Mapper | None = None,
        shm_threshold: int = 0,
        max_message: int = -1,
        key: bytes | None = None,
        listen: str | None = None,
        keys: Path | None = None,
        launchers: Mapping[str, Launcher] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.lock = threading.RLock()
        self.arena = arena
        self.mapper = mapper
        self._prepare = prepare
        self._sys_path = sys_path
        self._rundir = rundir
        self._shm_threshold = shm_threshold if arena is not None else 0
        self._max_message = max_message
        self._key = key or secrets.token_bytes(KEY_BYTES)
        self._signer = Signer(self._key)
        self._verifier = Verifier(self._key)
        self._prepared: dict[str, Prepared] = {}
        self._done: list[tuple[sch.Complete, Any]] = []
        self._mailbox = Mailbox()
        self._context: zmq.Context[Any] = zmq.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.MAXMSGSIZE, max_message)
        self.address = f"ipc://{rundir / 'broker'}"
        self._router.bind(self.address)
        self._poller = zmq.Poller()
        self._poller.register(self._router, zmq.POLLIN)
        self._poller.register(self._mailbox.fd, zmq.POLLIN)
        self._door: RemoteDoor | None = None
        if listen is not None:
            self._door = RemoteDoor(self._context, listen, keys, max_message)
            self._poller.register(self._door.router, zmq.POLLIN)
            scheduler.join_hint = self._door.hint
        self._workers = Workers(
            poller=self._poller,
            context=self._context,
            router=self._router,
            address=self.address,
            rundir=rundir,
            key=self._key,
            launcher=launcher or LocalLauncher(),
            launchers=launchers or {},
            runtime_root=runtime_root,
            verifier=self._verifier,
            arena=arena,
            mapper=mapper,
            max_message=max_message,
            door=(self._door.router, self._door.address) if self._door is not None else None,
        )
        self._io = self._workers.io
        self._cancel_builds = threading.Event()
        self._thread = threading.Thread(target=self._run, name="envrunner-broker", daemon=True)
        self.closed = threading.Event()
        self.direct = DirectPath(self)
        self._commands_table: dict[type, Callable[[Any], None]] = {
            Submit: lambda c: self._carry(self.scheduler.submit(c.ticket, time.monotonic())),
            Cancel: lambda c: self._carry(self.scheduler.cancel(c.ticket, time.monotonic())),
            Ready: self._on_ready,
            PrepareFailed: lambda c: self._carry(
                self.scheduler.prepare_failed(c.env, c.error, time.monotonic())
            ),
            Stop: lambda c: self._carry(
                self.scheduler.shutdown(c.cancel, time.monotonic(), c.kill)
            ),
            ReleaseHeld: self._on_release,
            Carry: lambda c: self._carry(c.actions),
            Drain: self._on_drain,
        }
        self._actions_table: dict[type, Callable[[Any], list[sch.Action] | None]] = {
            sch.Prepare: self._do_prepare,
            sch.StopBuilds: lambda _: self._cancel_builds.set(),
            sch.Start: self._do_start,
            sch.Dispatch: self._do_dispatch,
            sch.Pump: lambda a: self.scheduler.pump(a.env, time.monotonic()),
            sch.Complete: self._do_complete,
            sch.Shutdown: self._do_shutdown,
            sch.Kill: self._do_kill,
            sch.Forget: lambda a: self._workers.forget(a.ident),
            sch.Ignored: lambda a: log.warning("dropped %s from worker %r", a.why, a.ident),
        }

    # ------------------------------------------------------------------ any thread

    @property
    def remote_address(self) -> str:
        return self._door.address if self._door is not None else ""

    def start(self) -> None:
        self._thread.start()

    def submit(self, ticket: sch.Ticket) -> bool:
        """Hand a call over; False if the broker is gone."""
        return self._command(Submit(ticket))

    def cancel(self, ticket: sch.Ticket) -> None:
        """Withdraw a call that waits for a worker (its future was cancelled)."""
        self._command(Cancel(ticket))

    def shutdown(self, cancel: bool, kill: bool = False) -> None:
        """Ask the broker to finish; ``closed`` is set once everything is down."""
        self._command(Stop(cancel, kill))

    def kill_all(self) -> None:
        """Kill every worker now (a second Ctrl-C): the broker reaps them and closes."""
        later: list[sch.Action] = []
        with self.lock:
            actions = self.scheduler.shutdown(True, time.monotonic(), kill=True)
            for ident in list(self.scheduler.slots):
                actions += self.scheduler.kill(ident, sch.KillReason.SHUTDOWN)
            for action in actions:
                io = self._io.get(action.ident) if isinstance(action, sch.Kill) else None
                if io is not None:
                    io.process.kill()  # now, from this thread: the broker may be stuck
                else:
                    later.append(action)
        self._command(Carry(later))

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> dict[str, int]:
        """Counts for ``repr``: pools in use and live workers."""
        with self.lock:
            slots = list(self.scheduler.slots.values())
            busy = (sch.WorkerState.BUSY, sch.WorkerState.DIRECT)
            return {
                "pools": sum(
                    1 for p in self.scheduler.pools.values() if p.state is not sch.PoolState.NEW
                ),
                "workers": sum(1 for s in slots if s.state.live),
                "busy": sum(1 for s in slots if s.state in busy),
            }

    def worker_pids(self, env: str | None = None) -> list[int]:
        """Pids of live workers (of one environment, or all)."""
        with self.lock:
            return [
                s.pid
                for s in self.scheduler.slots.values()
                if s.state.live and s.pid and (env is None or s.env == env)
            ]

    def rejected(self) -> int:
        """Messages dropped unread (bad signature, replay, malformed), on every channel."""
        with self.lock:
            direct = sum(io.direct.verifier.rejected for io in self._io.values() if io.direct)
            return self._verifier.rejected + direct + self._workers.rejected_by_gone

    def release(self, target: str | bytes, blocks: list[Any], refs: list[int]) -> None:
        """The caller is done with blocks of a worker's arena or with objects it keeps."""
        self._command(ReleaseHeld(target, blocks, refs))

    def post(self, actions: list[sch.Action]) -> None:
        """Actions a calling thread got from the scheduler, for the broker thread."""
        if actions:
            self._command(Carry(actions))

    def drain(self, ident: bytes, timeout: float) -> None:
        """Wait until the broker has forwarded what a worker's pipes hold now."""
        done = threading.Event()
        if self._command(Drain(ident, done)):
            done.wait(timeout)

    def forget(self, ident: bytes) -> None:
        """Free what a gone worker held (under the lock; also from a calling thread)."""
        self._workers.forget(ident)

    def worker_io(self, ident: bytes) -> WorkerIO:
        return self._io[ident]

    def book(self, io: WorkerIO, result: Result) -> None:
        """What any answer says besides its value: blocks given back, objects kept (locked)."""
        for name, offset in result.freed:
            io.lent.discard((name, offset))
            if self.arena is not None:
                self.arena.free(name, offset)
        if result.kept:
            self.scheduler.kept(io.ident, result.kept)

    def _command(self, command: Command) -> bool:
        """Hand the broker thread a command; False if the broker is gone."""
        return self._mailbox.put(command)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            log.exception("envrunner broker failed")
            with self.lock:
                error = EnvrunnerError(f"the envrunner broker failed: {exc!r}")
                self._carry(self.scheduler.fail_everything(error))
                self._fail_commands(error)
        finally:
            self._close()
            self._complete()

    def _loop(self) -> None:
        while True:
            with self.lock:
                timeout = self._next_timeout(time.monotonic())
            events = self._poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
            with self.lock:
                for target, _ in events:
                    if target is self._router:
                        self._drain_router(self._router)
                    elif self._door is not None and target is self._door.router:
                        self._drain_router(self._door.router)
                    elif target == self._mailbox.fd:
                        self._drain_commands()
                    else:
                        exited = self._workers.ready(target)
                        if exited is not None:
                            self._reap(exited)
                now = time.monotonic()
                for io in list(self._io.values()):
                    if io.process.poll_every and io.process.poll() is not None:
                        self._reap(io)
                    elif io.process.poll_every:  # a Slurm job: its id, in its queue or not
                        self.scheduler.launched(io.ident, io.pid, io.process.pending, now)
                self._carry(self.scheduler.tick(now))
                finished = self.scheduler.finished()
            self._complete()
            if finished:
                return

    def _next_timeout(self, now: float) -> float | None:
        deadline = self.scheduler.next_deadline()
        polls = [io.process.poll_every for io in self._io.values() if io.process.poll_every]
        wait = None if deadline is None else max(0.0, deadline - now)
        if polls:
            wait = min(polls) if wait is None else min(wait, *polls)
        return wait

    def _complete(self) -> None:
        """Complete futures outside the lock: their callbacks may call into envrunner."""
        with self.lock:
            done, self._done = self._done, []
        for action, future in done:
            if future.done():
                continue
            if action.cancelled:
                future.cancel()
                continue
            if not future.running() and not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            if isinstance(action.outcome, BaseException):
                future.set_exception(action.outcome)
            else:
                future.set_result(action.outcome)

    # ------------------------------------------------------------------ commands

    def _drain_commands(self) -> None:
        for command in self._mailbox.take():
            self._commands_table[type(command)](command)
        self._flush_releases()

    def _on_ready(self, command: Ready) -> None:
        self._prepared[command.env] = command.prepared
        self._carry(self.scheduler.prepared(command.env, time.monotonic()))

    def _on_release(self, command: ReleaseHeld) -> None:
        target = command.target
        if isinstance(target, bytes):
            io = self._io.get(target)
        else:
            io = next((w for w in self._io.values() if target.startswith(w.prefix + "-")), None)
        if io is None:
            return  # gone: what it held went with it
        io.releases[0].extend(command.blocks)
        io.releases[1].extend(command.refs)
        self.scheduler.released(io.ident, command.refs)

    def _flush_releases(self) -> None:
        for io in self._io.values():
            blocks, refs = io.releases
            slot = self.scheduler.slots.get(io.ident)
            if (blocks or refs) and slot is not None and slot.state.live and io.welcomed:
                self._send(io, Release(blocks=list(blocks), refs=list(refs)))
                blocks.clear()
                refs.clear()

    def _on_drain(self, command: Drain) -> None:
        io = self._io.get(command.ident)
        if io is not None:
            self._workers.drain_output(io)
        command.done.set()

    def _fail_commands(self, error: BaseException) -> None:
        for command in self._mailbox.leftovers():
            if isinstance(command, Submit):
                self._done.append((sch.Complete(command.ticket, error), command.ticket.body.future))

    # ------------------------------------------------------------------ actions

    def _carry(self, actions: Iterable[sch.Action]) -> None:
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
                prepared = self._prepare(action.env, self._cancel_builds)
            except BaseException as exc:
                self._command(PrepareFailed(action.env, exc))
            else:
                self._command(Ready(action.env, prepared))

        name = f"envrunner-prepare-{action.env}"
        threading.Thread(target=prepare, name=name, daemon=True).start()

    def _do_start(self, action: sch.Start) -> list[sch.Action] | None:
        prepared = self._prepared[action.env]
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
        io = self._io[action.ident]
        try:
            frames = pack(request.message, self._signer, scope("to", io.ident))
        except EncodeError as exc:  # too large to send: the call fails, the worker is free
            more = self.scheduler.dispatch_refused(ticket, time.monotonic())
            self._workers.free_blocks(request)
            self._done.append((sch.Complete(ticket, exc), future))
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
        self._done.append((action, request.future))

    def _do_shutdown(self, action: sch.Shutdown) -> None:
        io = self._io.get(action.ident)
        if io is not None:
            self._send(io, Shutdown())
            io.process.told_to_go()

    def _do_kill(self, action: sch.Kill) -> None:
        io = self._io.get(action.ident)
        if io is not None:
            io.process.kill()

    def _send(self, io: WorkerIO, message: Any) -> None:
        try:
            frames = pack(message, self._signer, scope("to", io.ident))
            wire.send(io.router, frames, (io.ident,))
        except zmq.ZMQError as exc:
            # The worker is gone (EHOSTUNREACH): its exit, seen next, fails its call.
            log.debug("cannot send to %r: %s", io, exc)

    # ------------------------------------------------------------------ messages

    def _drain_router(self, router: zmq.Socket[Any]) -> None:
        while True:
            try:
                frames = wire.receive(router, zmq.NOBLOCK)
            except zmq.Again:
                return
            identity = frames[0]
            beat = identity.endswith(b".hb")
            io = self._io.get(identity[:-3] if beat else identity)
            if io is None and self._door is not None and router is self._door.router and not beat:
                self._admit(identity, frames[1:])
                continue
            if io is None or io.router is not router:
                self._verifier.rejected += 1
                log.warning("dropped a message from an unknown peer")
                continue
            try:
                message = unpack(scope("from", identity), frames[1:], self._verifier)
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
        self._carry(self.scheduler.hello(io.ident, time.monotonic()))

    def _on_result(self, io: WorkerIO, result: Result) -> None:
        self._workers.drain_output(io)
        self.book(io, result)
        outcome: Any
        if result.ok:
            if result.segments and self.mapper is not None:
                self.mapper.attach(result.segments)  # before the worker can go and unlink them
            buffers = list(result.buffers)
            fence = io.output.fence  # its output is written before the value is given out
            outcome = RawResult(result.payload, buffers, io.ident, io.pid, result.kept, fence)
        else:
            name = next((t.name for t in io.given if t.call_id == result.call_id), "a call")
            outcome = UndecodedError(result.payload, io.env, name, io.output.fence)
        self._carry(self.scheduler.result(io.ident, result.call_id, outcome, time.monotonic()))
        while io.given and io.given[0].state is sch.CallState.DONE:
            io.given.popleft()

    # ------------------------------------------------------------------ processes

    def _reap(self, io: WorkerIO) -> None:
        returncode = io.process.poll()
        if returncode is None or io.ident not in self._io:
            return
        if len(io.given) > 1:
            self._drain_router(io.router)  # answers it sent before it died settle first
        self._workers.unwatch(io)
        slot = self.scheduler.slots.get(io.ident)
        quiet = slot is not None and slot.state is sch.WorkerState.IDLE and slot.killed_for is None
        if quiet and not self.scheduler.stopping:
            log.warning(
                "worker for environment %r (pid %d) exited while idle: %s",
                io.env,
                io.pid,
                _describe(returncode),
            )
        log.debug("%r exited: %s", io, returncode)
        started = io.started_call()
        tail, why = list(io.output.tail), io.process.reason
        self._carry(
            self.scheduler.exited(io.ident, returncode, started, tail, time.monotonic(), why)
        )

    # ------------------------------------------------------------------ the end

    def _close(self) -> None:
        self._cancel_builds.set()
        with self.lock:
            ios = list(self._io.values())
        for io in ios:
            io.process.kill()
            io.process.wait(SHUTDOWN_GRACE)
            with self.lock:
                slot = self.scheduler.slots.pop(io.ident, None)
                if slot is not None and slot.held:  # the calling thread lets go of it
                    slot.state = sch.WorkerState.DEAD
                    self.scheduler.slots[io.ident] = slot
                    unlink_owned(io.prefix)
                else:
                    self.forget(io.ident)
        with self.lock:
            error = EnvrunnerError("the runner shut down before this call was handled")
            self._carry(self.scheduler.fail_everything(error))
            self._fail_commands(error)
        self._workers.close_launchers()  # nothing they started is left (queued jobs: scancel)
        self._router.close(linger=0)
        if self._door is not None:
            self._door.close()
        self._context.term()
        shutil.rmtree(self._rundir, ignore_errors=True)
        self._mailbox.close()
        self.closed.set()


def _describe(returncode: int | None) -> str:
    from ._runtime.errors import describe_exit

    return describe_exit(returncode)
