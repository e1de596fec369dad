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

Every decision is the scheduler's (``_scheduler.py``); the broker only does I/O, in three parts:
this module (the thread's poll loop, commands from calling threads through one table, the
clock, the end), ``_inbox.py`` (what workers say, checked and turned into events: messages,
hellos, results, exits) and ``_outbox.py`` (the actions the scheduler returns, carried out
through one table: builds, starts, calls sent, futures collected for completion). Workers are
known through the :class:`~envrunner._process.Process` interface alone. State shared with
calling threads (the scheduler) is guarded by one lock, which the broker thread holds while it
works and drops while it polls.

May import: the standard library, zmq, ``envrunner._calls``, ``_channels``, ``_commands``,
``_direct``, ``_gate``, ``_inbox``, ``_outbox``, ``_process``, ``_remote``, ``_actions``,
``_placement``, ``_scheduler``, ``_workers``, ``_runtime``.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import zmq

from . import _actions as sch
from ._calls import Prepared
from ._channels import WorkerIO
from ._commands import (
    Cancel,
    Carry,
    Command,
    Drain,
    InputDone,
    Mailbox,
    PrepareFailed,
    Ready,
    ReleaseHeld,
    Resolved,
    ResolveFailed,
    Stop,
    Submit,
)
from ._direct import DirectPath
from ._gate import DOMAIN, LocalGate, raise_open_files_limit
from ._inbox import Inbox
from ._outbox import BATCH_BYTES, Outbox
from ._placement import SHUTDOWN_GRACE
from ._process import Launcher, LocalLauncher
from ._remote import RemoteDoor
from ._runtime.errors import EnvrunnerError
from ._runtime.protocol import (
    KEY_BYTES,
    Release,
    Result,
    Signer,
    Verifier,
)
from ._runtime.shm import Arena, Mapper, unlink_owned
from ._scheduler import Scheduler
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
        self._sys_path = sys_path
        self._rundir = rundir
        self._shm_threshold = shm_threshold if arena is not None else 0
        self._max_message = max_message
        self._key = key or secrets.token_bytes(KEY_BYTES)
        self._signer = Signer(self._key)
        self._verifier = Verifier(self._key)
        self._mailbox = Mailbox()
        self._context: zmq.Context[Any] = zmq.Context()
        raise_open_files_limit()  # a flood of connections must not abort the caller (#20)
        self._gate = LocalGate(self._context)  # only our own children connect (#20)
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.ZAP_DOMAIN, DOMAIN)
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
            self._door = RemoteDoor(listen, keys, max_message)
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
        batch = BATCH_BYTES if max_message <= 0 else min(BATCH_BYTES, max_message)
        self._outbox = Outbox(
            scheduler, self._workers, self._signer, prepare, self._mailbox.put, batch
        )
        self._inbox = Inbox(
            scheduler,
            self._workers,
            self._verifier,
            self._door,
            self._outbox.carry,
            self._outbox.send,
            key=self._key,
            sys_path=sys_path,
            shm_threshold=self._shm_threshold,
            max_message=max_message,
            arena=arena,
            mapper=mapper,
        )
        self._thread = threading.Thread(target=self._run, name="envrunner-broker", daemon=True)
        self.closed = threading.Event()
        self.direct = DirectPath(self)
        self._commands_table: dict[type, Callable[[Any], None]] = {
            Submit: lambda c: self._outbox.carry(self.scheduler.submit(c.ticket, time.monotonic())),
            Cancel: lambda c: self._outbox.carry(self.scheduler.cancel(c.ticket, time.monotonic())),
            Ready: self._on_ready,
            PrepareFailed: lambda c: self._outbox.carry(
                self.scheduler.prepare_failed(c.env, c.error, time.monotonic())
            ),
            Stop: lambda c: self._outbox.carry(
                self.scheduler.shutdown(c.cancel, time.monotonic(), c.kill)
            ),
            ReleaseHeld: self._on_release,
            Carry: lambda c: self._outbox.carry(c.actions),
            Drain: self._on_drain,
            InputDone: lambda c: self._outbox.carry(
                self.scheduler.input_done(c.ticket, c.failed, time.monotonic())
            ),
            Resolved: self._on_resolved,
            ResolveFailed: lambda c: self._outbox.carry(
                self.scheduler.resolve_failed(c.ticket, c.error, time.monotonic())
            ),
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

    def input_done(self, ticket: sch.Ticket, failed: sch.Failed | None) -> None:
        """A future among a call's arguments is done (any thread: its done-callback)."""
        self._command(InputDone(ticket, failed))

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

    def activity(self) -> tuple[dict[str, int], dict[str, str]]:
        """Per environment: calls running in workers (those sent ahead still wait: queued), and
        pools building or failed; for live views (``_live.py``)."""
        running: dict[str, int] = {}
        states: dict[str, str] = {}
        with self.lock:
            for slot in self.scheduler.slots.values():
                if slot.running is not None and slot.state.live:
                    running[slot.env] = running.get(slot.env, 0) + 1
            for env, pool in self.scheduler.pools.items():
                if pool.state is sch.PoolState.PREPARING:
                    states[env] = "building"
                elif pool.state is sch.PoolState.FAILED:
                    states[env] = "failed"
        return running, states

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
            gone = self._workers.rejected_by_gone
            return self._verifier.rejected + direct + gone + self._gate.refused

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
        self._inbox.book(io, result)

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
                self._outbox.carry(self.scheduler.fail_everything(error))
                self._fail_commands(error)
        finally:
            self._close()
            self._complete()

    def _loop(self) -> None:
        self._mailbox.owner = threading.get_ident()
        while True:
            with self.lock:
                timeout = self._next_timeout(time.monotonic())
            if self._mailbox.waiting():  # put by this thread (done-callbacks): no wake-up
                timeout = 0
            events = self._poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
            with self.lock:
                if self._mailbox.waiting():
                    self._drain_commands()
                for target, _ in events:
                    if target is self._router:
                        self._inbox.drain(self._router)
                    elif self._door is not None and target is self._door.router:
                        self._inbox.drain(self._door.router)
                    elif target == self._mailbox.fd:
                        self._drain_commands()
                    else:
                        exited = self._workers.ready(target)
                        if exited is not None:
                            self._inbox.reap(exited)
                now = time.monotonic()
                for io in list(self._io.values()):
                    if io.process.poll_every and io.process.poll() is not None:
                        self._inbox.reap(io)
                    elif io.process.poll_every:  # a Slurm job: its id, in its queue or not
                        self.scheduler.launched(io.ident, io.pid, io.process.pending, now)
                self._outbox.carry(self.scheduler.tick(now))
                self._outbox.flush()  # the calls of this pass, packed per worker
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
            done, self._outbox.done = self._outbox.done, []
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
        self._outbox.prepared[command.env] = command.prepared
        self._outbox.carry(self.scheduler.prepared(command.env, time.monotonic()))

    def _on_resolved(self, command: Resolved) -> None:
        ticket, request = command.ticket, command.ticket.body
        request.message, request.blocks, request.deferred = command.message, command.blocks, None
        ticket.pin, ticket.pinned_what = command.pin, command.pinned_what
        self._outbox.carry(self.scheduler.resolved(ticket, time.monotonic()))

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
                self._outbox.send(io, Release(blocks=list(blocks), refs=list(refs)))
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
                self._outbox.done.append(
                    (sch.Complete(command.ticket, error), command.ticket.body.future)
                )

    # ------------------------------------------------------------------ the end

    def _close(self) -> None:
        self._outbox.cancel_builds.set()
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
            self._outbox.carry(self.scheduler.fail_everything(error))
            self._fail_commands(error)
        self._workers.close_launchers()  # nothing they started is left (queued jobs: scancel)
        self._router.close(linger=0)
        if self._door is not None:
            self._door.close()
        self._gate.close()
        self._context.term()
        shutil.rmtree(self._rundir, ignore_errors=True)
        self._mailbox.close()
        self.closed.set()
