"""The scheduler's moves, and its clock: where calls go, when workers come and go.

:class:`Placement` holds the state of one runner's pools (pools, worker slots, the calls waiting
in them) and the moves the scheduler's events are made of: dispatch a call, send calls ahead,
start a worker or build its environment, recycle, shut down or kill a worker, fail a pool, retry
a crashed call, let workers go at the end. It also owns the clock (``next_deadline``, ``tick``):
deadlines, heartbeats, start and idle timeouts.

:class:`~envrunner._scheduler.Scheduler` adds the events (a call submitted, a worker's hello, a
result, an exit, shutdown); both follow the same rules (no sockets, processes, threads or
clocks: time comes in as ``now``; every move appends the actions it needs to ``_out``).

May import: the standard library, ``envrunner._actions``, ``_runtime.errors``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._actions import (
    Action,
    CallState,
    Complete,
    Dispatch,
    Kill,
    KillReason,
    Pool,
    PoolConfig,
    PoolState,
    Prepare,
    Shutdown,
    Slot,
    Start,
    Ticket,
    WorkerState,
)
from ._runtime.errors import ReferenceLostError, WorkerStartError

__all__ = ["SHUTDOWN_GRACE", "START_FAILURE_LIMIT", "Placement"]

#: Worker starts that may fail in a row before a pool gives up (and fails its calls).
START_FAILURE_LIMIT = 3
#: Seconds workers get to leave after SHUTDOWN before they are killed.
SHUTDOWN_GRACE = 5.0


class Placement:
    """The state of one runner's pools, and the moves that change it (see the module).

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

    # ------------------------------------------------------------------ inside

    def _complete(self, ticket: Ticket, outcome: Any, cancelled: bool = False) -> None:
        if ticket.state is CallState.DONE:
            return
        ticket.state = CallState.DONE
        self._out.append(Complete(ticket, outcome, cancelled))

    def _queue(self, ticket: Ticket, now: float) -> None:
        """A call ready to run: into its pool's queue (or its worker's, when pinned)."""
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


# (tuples: membership by identity; an enum member's hash is Python code, asked on every pass)
_BEATING = (WorkerState.IDLE, WorkerState.BUSY, WorkerState.DIRECT)
_FINAL = frozenset({KillReason.TIMEOUT, KillReason.INTERRUPTED, KillReason.SHUTDOWN})
