"""The scheduler: pools, workers and calls as state machines, with no I/O.

::

    event (a method)               what changes                          actions it returns
    ────────────────               ────────────                          ──────────────────
    submit(ticket)                 a pool's queue (or a worker's pinned)  Prepare, Start, Dispatch
                                   (given futures: WAITING; identical to
                                   a pending call: MERGED; ``_graph.py``)
    input_done / resolved          WAITING ─► RESOLVING ─► QUEUED         Resolve, Complete
    prepared / prepare_failed      pool NEW ─► PREPARING ─► READY|FAILED  Start / Complete(error)
    launched / start_failed        slot STARTING (a failure counts)      Start again, or Complete
    hello                          STARTING ─► IDLE                      Dispatch
    result(ident, call, outcome)   BUSY ─► next sent ahead|IDLE|STOPPING  Complete, Dispatch
    checkout / answered_direct     IDLE ─► DIRECT ─► IDLE (caller thread)  Shutdown at max_calls
    exited(ident, code, started)   any ─► DEAD; its call fails or retries;
                                   unstarted calls go back to the queue  Complete, Forget, Start
    tick(now)                      deadlines, heartbeats, idle, starts   Kill, Shutdown, Complete
    shutdown(cancel)               queued calls run (or are cancelled),
                                   then every worker is let go           Shutdown, Kill, Complete

Two rules, as in h11's state machine:

- Everything that decides what happens to a call or a worker lives here (events) and in
  ``_placement.py`` (the moves they are made of, and the clock): which
  worker runs which call, when calls are sent ahead, when a worker is started, recycled, killed
  or let go, which error a call fails with. The broker (``_broker.py``) only carries out the
  actions, and tells the scheduler what happened (events).
- It knows no sockets, processes, threads or clocks: time comes in as ``now``; a call's encoded
  body and its future ride along opaquely on the ticket (``Ticket.body``). So every rule is
  tested by driving events and reading actions, in milliseconds (``tests/test_scheduler.py``).

An event the tables do not allow (a result from a worker that is not running that call, a hello
from a worker that is not starting) changes nothing and returns an :class:`Ignored` action that
says why; the broker logs it.

Not thread-safe: the broker calls it under one lock, from its thread or from a calling thread
(the direct path).

May import: the standard library, ``envrunner._actions``, ``_crashes``, ``_graph``,
``_placement``, ``_runtime.errors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import CancelledError
from typing import Any

from ._actions import (
    Action,
    CallState,
    Forget,
    Ignored,
    KillReason,
    PoolState,
    Pump,
    Slot,
    StopBuilds,
    Ticket,
    WorkerState,
)
from ._crashes import death_error, sort_out_calls
from ._graph import Graph
from ._placement import START_FAILURE_LIMIT
from ._runtime.errors import EnvrunnerError, ReferenceLostError, WorkerStartError, describe_exit

__all__ = ["Scheduler"]


# --------------------------------------------------------------------------- the machine


class Scheduler(Graph):
    """Pools of one runner: every decision about calls and workers.

    Args:
        pools: Per environment, how its workers run.
        start_timeout: Seconds a new worker has to say hello (and calls wait for a worker
            from another machine).
        heartbeat_timeout: Seconds without a heartbeat after which a worker counts as hung.
    """

    # ------------------------------------------------------------------ calls

    def submit(self, ticket: Ticket, now: float) -> list[Action]:
        """A call is handed over (one given futures waits for them: ``_graph.py``)."""
        if ticket.merge_key is not None and self._merge(ticket):
            return []  # an identical call is pending: this one completes with it
        if ticket.deferred:
            self._wait(ticket)
        else:
            self._queue(ticket, now)
        return self._emit()

    def dispatch_refused(self, ticket: Ticket, now: float) -> list[Action]:
        """A Dispatch was not carried out: its future had been cancelled."""
        slot = self.slots.get(ticket.worker or b"")
        follower = self._promote(ticket)  # merged calls still run, once
        ticket.state = CallState.DONE
        ticket.worker = None
        if follower is not None:
            self._queue(follower, now)
        if slot is not None:
            if slot.running is ticket:
                slot.running = slot.ahead.popleft() if slot.ahead else None
                if slot.running is not None:
                    self._start_clock(slot.running, now)
                elif slot.state is WorkerState.BUSY:
                    slot.state = WorkerState.IDLE
                    slot.idle_since = now
            elif ticket in slot.ahead:
                slot.ahead.remove(ticket)
            self._pump(self.pools[slot.env], now)
            self._let_go(now)
        return self._emit()

    def cancel(self, ticket: Ticket, now: float) -> list[Action]:
        """Withdraw a call that waits for a worker (its future was cancelled); a running one
        stays as it is."""
        if self._withdraw(ticket):
            self._let_go(now)
        elif ticket.state is CallState.QUEUED:
            pool = self.pools[ticket.env]
            for queue in [pool.queue, *(s.pinned for s in pool.workers)]:
                if ticket in queue:
                    follower = self._promote(ticket)
                    if follower is not None:  # it takes the place: merged calls still run
                        follower.state = CallState.QUEUED
                        queue[queue.index(ticket)] = follower
                    else:
                        queue.remove(ticket)
                    self._complete(ticket, CancelledError(), cancelled=True)
                    break
            self._let_go(now)
        return self._emit()

    def result(self, ident: bytes, call_id: int, outcome: Any, now: float) -> list[Action]:
        """A worker answered a call through the broker (``outcome``: its value or error)."""
        slot = self.slots.get(ident)
        ticket = slot.running if slot is not None else None
        if slot is None or slot.state is not WorkerState.BUSY or ticket is None:
            return [Ignored(ident, f"a result for call {call_id}, which it was not running")]
        if ticket.call_id != call_id:
            return [Ignored(ident, f"a result for call {call_id}; it runs {ticket.call_id}")]
        slot.calls += 1
        slot.running = slot.ahead.popleft() if slot.ahead else None
        pool = self.pools[slot.env]
        if slot.running is not None:  # the next one sent ahead has started
            self._start_clock(slot.running, now)
        elif self._recycle(pool, slot):
            self._shutdown(slot, now)
        else:
            slot.state = WorkerState.IDLE
            slot.idle_since = now
        self._complete(ticket, outcome)
        self._pump(pool, now)
        self._let_go(now)
        return self._emit()

    def kept(self, ident: bytes, ref: int) -> None:
        """A worker keeps an object for the caller (a result with ``keep=True``)."""
        slot = self.slots.get(ident)
        if slot is not None and ref:
            slot.kept.add(ref)

    def released(self, ident: bytes, refs: Sequence[int]) -> None:
        """The caller let go of objects a worker keeps."""
        slot = self.slots.get(ident)
        if slot is not None:
            slot.kept.difference_update(refs)

    # ------------------------------------------------------------------ the direct path

    def checkout(self, ticket: Ticket, now: float) -> Slot | None:
        """An idle worker for a calling thread to run ``ticket`` on itself, or None.

        None when the pool is not ready, has calls queued (they go first), or has no idle
        worker (or not the one the ticket is pinned to): the call then goes through the broker.
        """
        pool = self.pools[ticket.env]
        ready = pool.state is PoolState.READY and pool.config.direct  # direct: workers here
        if self.stopping or not ready or pool.queue or ticket.deferred:
            return None
        if ticket.merge_key is not None and ticket.merge_key in self.leaders:
            return None  # an identical call is pending: the broker merges this one into it
        if ticket.pin is not None:
            pinned = self.slots.get(ticket.pin)
            candidates = [pinned] if pinned is not None and not pinned.pinned else []
        else:
            candidates = pool.workers
        for slot in candidates:
            if slot.state is WorkerState.IDLE and slot.direct and not slot.joined and not slot.held:
                slot.state = WorkerState.DIRECT
                slot.held_by = ticket.call_id
                slot.running = ticket
                ticket.state = CallState.RUNNING
                ticket.worker = slot.ident
                return slot
        return None

    def answered_direct(self, ident: bytes, ticket: Ticket, now: float) -> list[Action]:
        """The calling thread got the answer of a direct call (it completes the call itself).

        Returns ``Shutdown`` when the worker reached ``max_calls`` (the calling thread sends it
        on the direct channel), and ``Pump`` when calls wait: the broker thread then dispatches
        them, so that every message to a worker is decided and sent in one order.
        """
        slot = self.slots.get(ident)
        ticket.state = CallState.DONE
        if slot is None or slot.state is not WorkerState.DIRECT:
            return []  # it died right after answering: its exit is reported as usual
        slot.calls += 1
        slot.running = None
        slot.held_by = None  # the calling thread is done with its channel
        pool = self.pools[slot.env]
        if self._recycle(pool, slot):
            self._shutdown(slot, now)
        else:
            slot.state = WorkerState.IDLE
            slot.idle_since = now
        if pool.queue or slot.pinned or self.stopping:
            self._out.append(Pump(slot.env))
        return self._emit()

    def pump(self, env: str, now: float) -> list[Action]:
        """Dispatch what waits in a pool (asked for by a ``Pump`` action)."""
        self._pump(self.pools[env], now)
        self._let_go(now)
        return self._emit()

    def let_go(self, ident: bytes, call_id: int | None = None) -> list[Action]:
        """The calling thread of ``call_id`` is done with a worker's direct channel (after a
        failure: its answer, ``answered_direct``, lets go by itself)."""
        slot = self.slots.get(ident)
        if slot is None or (call_id is not None and slot.held_by not in (None, call_id)):
            return []  # (another thread holds it now)
        slot.held_by = None
        if slot.state is WorkerState.DEAD:
            del self.slots[ident]
            return [Forget(ident)]
        return []

    # ------------------------------------------------------------------ pools

    def prepared(self, env: str, now: float) -> list[Action]:
        pool = self.pools[env]
        pool.state = PoolState.READY
        pool.start_failures = 0
        self._pump(pool, now)
        self._let_go(now)
        return self._emit()

    def prepare_failed(self, env: str, error: BaseException, now: float) -> list[Action]:
        pool = self.pools[env]
        self._fail_pool(pool, error)
        self._let_go(now)
        return self._emit()

    # ------------------------------------------------------------------ workers

    def start_failed(self, ident: bytes, error: WorkerStartError, now: float) -> list[Action]:
        """A worker could not be launched at all (its interpreter is gone, no fds left)."""
        slot = self.slots.get(ident)
        if slot is None:
            return []
        if slot.state is not WorkerState.STARTING:
            return [Ignored(ident, "a failed start of a worker that is not starting")]
        del self.slots[ident]
        pool = self.pools[slot.env]
        if slot in pool.workers:
            pool.workers.remove(slot)
        slot.state = WorkerState.DEAD
        pool.start_failures += 1
        self._after_start_failure(pool, error, now)
        return self._emit()

    def launched(self, ident: bytes, pid: int, pending: bool = False, now: float = 0.0) -> None:
        """A Start was carried out, or what runs the worker elsewhere says more: its pid (for
        messages), and whether it waits in a queue (its start timeout counts once it stops)."""
        slot = self.slots.get(ident)
        if slot is not None:
            slot.started = now if slot.pending and not pending else slot.started
            slot.pid, slot.pending = pid or slot.pid, pending

    def joined(self, ident: bytes, env: str, pid: int, now: float) -> Slot | None:
        """A worker started elsewhere asks to join ``env``; its Slot, or None (refused)."""
        pool = self.pools.get(env)
        if pool is None or pool.config.local or self.stopping or ident in self.slots:
            return None
        slot = Slot(ident, env, now, joined=True, pid=pid, last_beat=now)
        self.slots[ident] = slot
        pool.workers.append(slot)
        if pool.state is PoolState.NEW:
            pool.state = PoolState.READY
        return slot

    def hello(self, ident: bytes, now: float, direct: bool = True) -> list[Action]:
        """A worker said hello (and was welcomed): it takes calls (direct ones too, unless it
        could not prove the session key on its direct channel)."""
        slot = self.slots.get(ident)
        if slot is None or slot.state is not WorkerState.STARTING:
            return [Ignored(ident, "a hello from a worker that is not starting")]
        pool = self.pools[slot.env]
        slot.direct = direct
        slot.state = WorkerState.IDLE
        slot.idle_since = slot.last_beat = now
        pool.start_failures = 0
        pool.waiting_since = None
        self._pump(pool, now)
        self._let_go(now)
        return self._emit()

    def heartbeat(self, ident: bytes, now: float) -> None:
        slot = self.slots.get(ident)
        if slot is not None:
            slot.last_beat = now

    def incompatible(self, ident: bytes, error: WorkerStartError, now: float) -> list[Action]:
        """A worker speaks another protocol version: every new one would say the same."""
        slot = self.slots.get(ident)
        if slot is None:
            return []
        starting = slot.state is WorkerState.STARTING
        self._kill(slot, KillReason.PROTOCOL)
        if starting:  # a worker that already worked just sent one bad message: only it goes
            pool = self.pools[slot.env]
            pool.start_failures = START_FAILURE_LIMIT
            self._after_start_failure(pool, error, now)
        return self._emit()

    def kill(self, ident: bytes, reason: KillReason) -> list[Action]:
        """Kill a worker from outside the timers (a direct call's deadline, Ctrl-C)."""
        slot = self.slots.get(ident)
        if slot is not None and slot.state is not WorkerState.DEAD:
            self._kill(slot, reason)
        return self._emit()

    def exited(
        self,
        ident: bytes,
        returncode: int | None,
        started: int,
        tail: Sequence[str],
        now: float,
        why: str = "",
    ) -> list[Action]:
        """A worker's process ended (after its last answers and output were read).

        Args:
            returncode: Its exit status (negative: the signal that killed it).
            started: The id of the last call it started, from its own record (0: unknown).
            tail, why: Its last stderr lines; why it ended, as what ran it says (Slurm's state).
        """
        slot = self.slots.get(ident)
        if slot is None or slot.state is WorkerState.DEAD:
            return []
        previous = slot.state
        slot.state = WorkerState.DEAD
        if not slot.held:  # else the calling thread lets go of it first
            del self.slots[ident]
            self._out.append(Forget(ident))
        pool = self.pools[slot.env]
        if slot in pool.workers:
            pool.workers.remove(slot)
        if previous is WorkerState.DIRECT:
            started = 0  # a direct call is not recorded: it is the one that was running
        running, lost = sort_out_calls(slot, pool.queue, started)
        if running is not None and self._retry(running, slot, pool):
            running = None
        for ticket in lost:
            self._complete(
                ticket, death_error(slot, ticket, returncode, tail, self.heartbeat_timeout, True)
            )
        if running is not None:
            self._complete(
                running,
                death_error(slot, running, returncode, tail, self.heartbeat_timeout, why=why),
            )
        lost_why = f"its worker exited: {why or describe_exit(returncode)}"
        while slot.pinned:
            ticket = slot.pinned.popleft()
            self._complete(ticket, ReferenceLostError(ticket.env, ticket.pinned_what, lost_why))
        slot.kept.clear()
        if previous is WorkerState.STARTING and slot.killed_for is None:
            pool.start_failures += 1
            error = WorkerStartError(
                slot.env,
                slot.pid,
                f"it exited before saying hello ({why or describe_exit(returncode)})",
                list(tail),
                returncode,
            )
            self._after_start_failure(pool, error, now)
        self._pump(pool, now)
        self._let_go(now)
        return self._emit()

    # ------------------------------------------------------------------ the end

    def shutdown(self, cancel: bool, now: float, kill: bool = False) -> list[Action]:
        """Finish, then let every worker go. Queued calls run first; with ``cancel`` they are
        cancelled instead and running ones finish (as ``Executor.shutdown(cancel_futures=True)``);
        with ``kill`` running ones are stopped too, failing with an error that says so."""
        self.stopping = True
        cancel = cancel or kill
        if cancel:
            self._out.append(StopBuilds())
            for pool in self.pools.values():
                queued = list(pool.queue)
                pool.queue.clear()
                for slot in pool.workers:
                    queued += slot.pinned
                    slot.pinned.clear()
                for ticket in queued:
                    self._complete(ticket, CancelledError("the runner shut down first"), True)
            for ticket in list(self.waiting.values()):
                self._complete(ticket, CancelledError("the runner shut down first"), True)
            stopped = EnvrunnerError("stopped: the runner was terminated while the call ran")
            for slot in list(self.slots.values()) if kill else ():
                while slot.ahead:  # given to a worker: running, as far as the caller knows
                    self._complete(slot.ahead.popleft(), stopped)
                if slot.state in (WorkerState.BUSY, WorkerState.DIRECT) and slot.running:
                    ticket, slot.running = slot.running, None
                    self._complete(ticket, stopped)
                    self._kill(slot, KillReason.SHUTDOWN)
        preparing = any(p.state is PoolState.PREPARING and not p.queue for p in self.pools.values())
        if preparing and not cancel and not self.waiting:  # (cancel stopped them above)
            self._out.append(StopBuilds())
        self._let_go(now)
        return self._emit()

    def finished(self) -> bool:
        """Shut down and nothing left: every worker gone, every call completed."""
        if not self.stopping or self.slots or self.waiting:
            return False
        return not any(p.queue for p in self.pools.values())

    def fail_everything(self, error: BaseException) -> list[Action]:
        """The broker cannot go on: every call not yet completed fails with ``error``."""
        for ticket in list(self.waiting.values()):
            self._complete(ticket, error)
        for pool in self.pools.values():
            while pool.queue:
                self._complete(pool.queue.popleft(), error)
        for slot in self.slots.values():
            if slot.running is not None:
                self._complete(slot.running, error)
                slot.running = None
            for queue in (slot.ahead, slot.pinned):
                while queue:
                    self._complete(queue.popleft(), error)
        return self._emit()
