"""The scheduler: pools, workers and calls as state machines, with no I/O.

::

    event (a method)               what changes                          actions it returns
    ────────────────               ────────────                          ──────────────────
    submit(ticket)                 a pool's queue (or a worker's pinned)  Prepare, Start, Dispatch
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

- Everything that decides what happens to a call or a worker lives here, in this file: which
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

May import: the standard library, ``envrunner._actions``, ``_crashes``, ``_runtime.errors``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from typing import Any

from ._actions import (
    Action,
    CallState,
    Complete,
    Dispatch,
    Forget,
    Ignored,
    Kill,
    KillReason,
    Pool,
    PoolConfig,
    PoolState,
    Prepare,
    Pump,
    Shutdown,
    Slot,
    Start,
    StopBuilds,
    Ticket,
    WorkerState,
)
from ._crashes import death_error, sort_out_calls
from ._runtime.errors import EnvrunnerError, ReferenceLostError, WorkerStartError, describe_exit

__all__ = ["SHUTDOWN_GRACE", "START_FAILURE_LIMIT", "Scheduler"]

#: Worker starts that may fail in a row before a pool gives up (and fails its calls).
START_FAILURE_LIMIT = 3
#: Seconds workers get to leave after SHUTDOWN before they are killed.
SHUTDOWN_GRACE = 5.0


# --------------------------------------------------------------------------- the machine


class Scheduler:
    """Pools of one runner: every decision about calls and workers.

    Args:
        pools: Per environment, how its workers run.
        start_timeout: Seconds a new worker has to say hello (and calls wait for a worker
            from another machine).
        heartbeat_timeout: Seconds without a heartbeat after which a worker counts as hung.
    """

    def __init__(
        self,
        pools: dict[str, PoolConfig],
        *,
        start_timeout: float = 60.0,
        heartbeat_timeout: float | None = 30.0,
    ) -> None:
        self.pools = {name: Pool(name, config) for name, config in pools.items()}
        self.slots: dict[bytes, Slot] = {}
        self.start_timeout = start_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.stopping = False
        self.stop_deadline: float | None = None
        #: What to add when no worker joined an environment (how to start one), by env name.
        self.join_hint: Callable[[str], str] = lambda env: ""
        self._started = 0
        self._out: list[Action] = []

    def __repr__(self) -> str:
        live = sum(1 for s in self.slots.values() if s.state.live)
        queued = sum(len(p.queue) for p in self.pools.values())
        return f"<Scheduler pools={len(self.pools)} workers={live} queued={queued}>"

    def _emit(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ calls

    def submit(self, ticket: Ticket, now: float) -> list[Action]:
        """A call is handed over."""
        pool = self.pools[ticket.env]
        ticket.state = CallState.QUEUED
        if pool.state is PoolState.FAILED:
            assert pool.error is not None
            self._complete(ticket, pool.error)
        elif ticket.pin is not None:
            slot = self.slots.get(ticket.pin)
            if slot is None or not slot.state.live:
                why = "its worker has exited"
                self._complete(ticket, ReferenceLostError(ticket.env, ticket.pinned_what, why))
            else:
                slot.pinned.append(ticket)
                self._pump(pool, now)
        else:
            pool.queue.append(ticket)
            self._pump(pool, now)
        return self._emit()

    def dispatch_refused(self, ticket: Ticket, now: float) -> list[Action]:
        """A Dispatch was not carried out: its future had been cancelled."""
        slot = self.slots.get(ticket.worker or b"")
        ticket.state = CallState.DONE
        ticket.worker = None
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
        if ticket.state is CallState.QUEUED:
            pool = self.pools[ticket.env]
            for queue in [pool.queue, *(s.pinned for s in pool.workers)]:
                if ticket in queue:
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
        if self.stopping or not ready or pool.queue:
            return None
        if ticket.pin is not None:
            pinned = self.slots.get(ticket.pin)
            candidates = [pinned] if pinned is not None and not pinned.pinned else []
        else:
            candidates = pool.workers
        for slot in candidates:
            if slot.state is WorkerState.IDLE and not slot.joined and not slot.held:
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

    def hello(self, ident: bytes, now: float) -> list[Action]:
        """A worker said hello (and was welcomed): it takes calls."""
        slot = self.slots.get(ident)
        if slot is None or slot.state is not WorkerState.STARTING:
            return [Ignored(ident, "a hello from a worker that is not starting")]
        pool = self.pools[slot.env]
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

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (None: only an event can change anything)."""
        deadlines: list[float] = []
        beat = self.heartbeat_timeout
        for slot in self.slots.values():
            if slot.state is WorkerState.BUSY and slot.running and slot.running.deadline:
                deadlines.append(slot.running.deadline)
            elif slot.state is WorkerState.STARTING and not slot.pending:
                deadlines.append(slot.started + self.start_timeout)
            elif slot.state is WorkerState.IDLE and not slot.kept:
                idle = self.pools[slot.env].config.idle_timeout
                if idle is not None:
                    deadlines.append(slot.idle_since + idle)
            if beat is not None and slot.state in _BEATING:
                deadlines.append(slot.last_beat + beat)
            if slot.state is WorkerState.STOPPING and slot.stop_by is not None:
                deadlines.append(slot.stop_by)
        for pool in self.pools.values():
            if pool.queue and pool.waiting_since is not None:
                deadlines.append(pool.waiting_since + self.start_timeout)
        if self.stop_deadline is not None:
            deadlines.append(self.stop_deadline)
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> list[Action]:
        """The clock moved: deadlines, heartbeats, start and idle timeouts, waits."""
        beat, limit = self.heartbeat_timeout, self.start_timeout
        killed: set[bytes] = set()
        for slot in list(self.slots.values()):
            start = slot.started
            if beat is not None and slot.state in _BEATING and now >= slot.last_beat + beat:
                self._kill(slot, KillReason.HEARTBEAT)
            elif slot.state is WorkerState.BUSY and slot.running is not None:
                deadline = slot.running.deadline
                if deadline is not None and now >= deadline:
                    self._kill(slot, KillReason.TIMEOUT)
            elif slot.state is WorkerState.STARTING and not slot.pending and now >= start + limit:
                self._kill(slot, KillReason.START_TIMEOUT)
                pool = self.pools[slot.env]
                pool.start_failures += 1
                error = WorkerStartError(
                    slot.env, slot.pid, f"it did not say hello within {self.start_timeout:g}s"
                )
                self._after_start_failure(pool, error, now)
            elif slot.state is WorkerState.IDLE and not slot.kept:  # keeps objects: stays
                idle = self.pools[slot.env].config.idle_timeout
                if idle is not None and now >= slot.idle_since + idle:
                    self._shutdown(slot, now)
            elif slot.state is WorkerState.STOPPING and slot.stop_by and now >= slot.stop_by:
                slot.stop_by = None  # told to go, and still there
                self._kill(slot, KillReason.SHUTDOWN)
                killed.add(slot.ident)
        for pool in self.pools.values():
            waiting = pool.waiting_since
            if pool.queue and waiting is not None and now >= waiting + self.start_timeout:
                pool.waiting_since = None
                if any(s.state.live for s in pool.workers):
                    continue
                error = WorkerStartError(
                    pool.env,
                    0,
                    f"no worker on another machine joined within {self.start_timeout:g}s"
                    + self.join_hint(pool.env),
                )
                while pool.queue:
                    self._complete(pool.queue.popleft(), error)
            elif not pool.queue:
                pool.waiting_since = None
        if self.stop_deadline is not None and now >= self.stop_deadline:
            for slot in list(self.slots.values()):
                if slot.state is not WorkerState.DEAD and slot.ident not in killed:
                    self._kill(slot, KillReason.SHUTDOWN)
            self.stop_deadline = now + SHUTDOWN_GRACE
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
            stopped = EnvrunnerError("stopped: the runner was terminated while the call ran")
            for slot in list(self.slots.values()) if kill else ():
                while slot.ahead:  # given to a worker: running, as far as the caller knows
                    self._complete(slot.ahead.popleft(), stopped)
                if slot.state in (WorkerState.BUSY, WorkerState.DIRECT) and slot.running:
                    ticket, slot.running = slot.running, None
                    self._complete(ticket, stopped)
                    self._kill(slot, KillReason.SHUTDOWN)
        preparing = any(p.state is PoolState.PREPARING and not p.queue for p in self.pools.values())
        if preparing and not cancel:  # (cancel stopped them above)
            self._out.append(StopBuilds())
        self._let_go(now)
        return self._emit()

    def finished(self) -> bool:
        """Shut down and nothing left: every worker gone, every call completed."""
        if not self.stopping or self.slots:
            return False
        return not any(p.queue for p in self.pools.values())

    def fail_everything(self, error: BaseException) -> list[Action]:
        """The broker cannot go on: every call not yet completed fails with ``error``."""
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

    # ------------------------------------------------------------------ inside

    def _complete(self, ticket: Ticket, outcome: Any, cancelled: bool = False) -> None:
        if ticket.state is CallState.DONE:
            return
        ticket.state = CallState.DONE
        self._out.append(Complete(ticket, outcome, cancelled))

    def _start_clock(self, ticket: Ticket, now: float) -> None:
        if ticket.timeout is not None:
            ticket.deadline = now + ticket.timeout

    def _pump(self, pool: Pool, now: float) -> None:
        """Dispatch queued calls to idle workers; start workers or the build as needed."""
        for slot in pool.workers:
            if slot.state is WorkerState.IDLE and (slot.pinned or pool.queue):
                ticket = slot.pinned.popleft() if slot.pinned else pool.queue.popleft()
                self._dispatch(slot, ticket, now)
        self._send_ahead(pool, now)
        if not pool.queue:
            return
        if pool.state is PoolState.FAILED:  # calls back from a dead worker: nowhere to run
            assert pool.error is not None
            while pool.queue:
                self._complete(pool.queue.popleft(), pool.error)
            return
        if not pool.config.local:
            if pool.state is PoolState.NEW:
                pool.state = PoolState.READY
            if pool.waiting_since is None:
                pool.waiting_since = now
            return  # its workers come from other machines: the calls wait for one to join
        if pool.state is PoolState.NEW:
            pool.state = PoolState.PREPARING
            self._out.append(Prepare(pool.env))
            return
        if pool.state is not PoolState.READY:
            return
        live = [s for s in pool.workers if s.state.live and not s.joined]
        starting = sum(1 for s in live if s.state is WorkerState.STARTING)
        wanted = min(len(pool.queue) - starting, pool.config.workers - len(live))
        for _ in range(max(0, wanted)):
            self._started += 1
            slot = Slot(f"w{self._started}".encode(), pool.env, now, last_beat=now)
            self.slots[slot.ident] = slot
            pool.workers.append(slot)
            self._out.append(Start(pool.env, slot.ident))

    def _send_ahead(self, pool: Pool, now: float) -> None:
        """With a backlog, keep every busy worker a few calls ahead: no round trip between them.

        Only while calls wait (so a free worker is never passed over), never to a worker that
        calls on its kept objects wait for (they would wait behind every call sent ahead), and
        only unpinned calls. A call sent ahead counts as running from then on, as in
        ``ProcessPoolExecutor``'s call queue: the worker starts it the moment it has answered
        the one before, so ``cancel()`` could not promise it will not run. Its timeout starts
        when the scheduler hears the call before it answered.
        """
        window = pool.config.window
        if window <= 1 or not pool.queue:
            return
        local = [s for s in pool.workers if s.state.live and not s.joined]
        if len(local) < pool.config.workers or any(s.state is WorkerState.STARTING for s in local):
            return  # a worker will be free (or started) for them: no need to queue behind one
        busy = [s for s in local if s.state is WorkerState.BUSY and not s.pinned]
        for _ in range(window - 1):
            for slot in busy:
                if not pool.queue:
                    return
                if len(slot.ahead) + 1 >= window or self._recycle_soon(pool, slot):
                    continue
                self._dispatch(slot, pool.queue.popleft(), now)

    def _dispatch(self, slot: Slot, ticket: Ticket, now: float) -> None:
        slot.state = WorkerState.BUSY
        ticket.state = CallState.RUNNING
        ticket.worker = slot.ident
        if slot.running is None:
            slot.running = ticket
            self._start_clock(ticket, now)
        else:  # sent ahead: the worker starts it when the one before is answered
            slot.ahead.append(ticket)
        self._out.append(Dispatch(slot.ident, ticket))

    def _recycle(self, pool: Pool, slot: Slot) -> bool:
        """Whether a worker has served its ``max_calls`` and should make way for a new one."""
        limit = pool.config.max_calls
        return limit is not None and slot.calls >= limit and not slot.kept

    def _recycle_soon(self, pool: Pool, slot: Slot) -> bool:
        limit = pool.config.max_calls
        return limit is not None and slot.calls + 1 + len(slot.ahead) >= limit

    def _shutdown(self, slot: Slot, now: float) -> None:
        slot.state = WorkerState.STOPPING
        slot.stop_by = now + SHUTDOWN_GRACE  # then it is killed
        self._out.append(Shutdown(slot.ident))

    def _kill(self, slot: Slot, reason: KillReason) -> None:
        slot.killed_for = slot.killed_for or reason
        if slot.state is not WorkerState.DEAD:
            slot.state = WorkerState.STOPPING
        self._out.append(Kill(slot.ident, reason))

    def _fail_pool(self, pool: Pool, error: BaseException) -> None:
        pool.state = PoolState.FAILED
        pool.error = error
        while pool.queue:
            self._complete(pool.queue.popleft(), error)

    def _after_start_failure(self, pool: Pool, error: WorkerStartError, now: float) -> None:
        if pool.start_failures >= START_FAILURE_LIMIT or self.stopping:
            self._fail_pool(
                pool,
                WorkerStartError(
                    error.env,
                    error.pid,
                    f"{error.reason}; gave up after {pool.start_failures} attempts in a row",
                    error.stderr_tail,
                    error.returncode,
                ),
            )
        else:
            self._pump(pool, now)  # try another

    def _let_go(self, now: float) -> None:
        """While shutting down: let go of every worker that has nothing left to do."""
        if not self.stopping:
            return
        for slot in list(self.slots.values()):
            if self.pools[slot.env].queue or slot.pinned:
                continue
            if slot.state is WorkerState.IDLE:
                self._shutdown(slot, now)
            elif slot.state is WorkerState.STARTING:
                self._kill(slot, KillReason.SHUTDOWN)
        pending = any(p.queue for p in self.pools.values())
        busy = any(s.state in (WorkerState.BUSY, WorkerState.DIRECT) for s in self.slots.values())
        if not pending and not busy and self.stop_deadline is None:
            self.stop_deadline = now + SHUTDOWN_GRACE

    def _retry(self, ticket: Ticket, slot: Slot, pool: Pool) -> bool:
        """Run a crashed call again if it asked for retries (never after a timeout, an
        interrupt or a shutdown)."""
        if ticket.retries <= 0 or slot.killed_for in _FINAL:
            return False
        ticket.retries -= 1
        ticket.worker = None
        ticket.deadline = None
        if ticket.pin is not None:
            self._complete(
                ticket, ReferenceLostError(ticket.env, ticket.pinned_what, "its worker died")
            )
        else:
            ticket.state = CallState.QUEUED
            pool.queue.appendleft(ticket)
        return True


_BEATING = frozenset({WorkerState.IDLE, WorkerState.BUSY, WorkerState.DIRECT})
_FINAL = frozenset({KillReason.TIMEOUT, KillReason.INTERRUPTED, KillReason.SHUTDOWN})
