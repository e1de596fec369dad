"""What the scheduler speaks: the states of pools, workers and calls, the records it keeps
(tickets, slots, pools), and the actions it returns.

::

    Ticket  one call        [WAITING ─► RESOLVING ─►] QUEUED ─► RUNNING ─► DONE
                            (or MERGED into an identical call pending: DONE with it)
    Slot    one worker      STARTING ─► IDLE ⇄ BUSY | DIRECT ─► STOPPING ─► DEAD
    Pool    one environment NEW ─► PREPARING ─► READY | FAILED
    actions Prepare, StopBuilds, Start, Dispatch, Pump, Resolve, Complete, Shutdown, Kill,
            Forget, Ignored: what the broker carries out (``_broker.py``)

Only the scheduler (``_scheduler.py``) changes these records; everyone else reads them.

May import: the standard library.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Action",
    "CallState",
    "Complete",
    "Dispatch",
    "Failed",
    "Forget",
    "Ignored",
    "Kill",
    "KillReason",
    "Pool",
    "PoolConfig",
    "PoolState",
    "Prepare",
    "Pump",
    "Resolve",
    "Shutdown",
    "Slot",
    "Start",
    "StopBuilds",
    "Ticket",
    "WorkerState",
]


class PoolState(enum.Enum):
    NEW = "new"  # nothing asked for it yet
    PREPARING = "preparing"  # its environment is being built (or found)
    READY = "ready"  # workers can start
    FAILED = "failed"  # its build failed, or its workers would not start: calls fail at once


class WorkerState(enum.Enum):
    STARTING = "starting"  # launched, no hello yet
    IDLE = "idle"
    BUSY = "busy"  # running a call through the broker (and maybe holding calls sent ahead)
    DIRECT = "direct"  # checked out by a calling thread for a synchronous call
    STOPPING = "stopping"  # told to go, or killed: its exit is awaited
    DEAD = "dead"

    @property
    def live(self) -> bool:
        # (identity, not a set: an enum member's hash is Python code, and this is asked for
        # every worker of a pool on every call)
        return self is not WorkerState.STOPPING and self is not WorkerState.DEAD


class CallState(enum.Enum):
    WAITING = "waiting"  # some of its inputs (futures among its arguments) are not done yet
    RESOLVING = "resolving"  # its inputs are done: the caller puts their values in (Resolve)
    MERGED = "merged"  # an identical call was pending: it completes with that one
    QUEUED = "queued"  # waiting for a worker (in a pool's queue, or a worker's pinned queue)
    RUNNING = "running"  # given to a worker (running, or sent ahead of the one it runs)
    DONE = "done"  # completed: a Complete action carried its outcome


class KillReason(enum.Enum):
    """Why envrunner killed or let go of a worker; it decides the error of the call it ran."""

    TIMEOUT = "timeout"
    HEARTBEAT = "heartbeat"
    START_TIMEOUT = "start timeout"
    INTERRUPTED = "interrupted"
    SHUTDOWN = "shutdown"
    PROTOCOL = "protocol"


@dataclass(frozen=True)
class PoolConfig:
    """How one environment's workers are run."""

    workers: int = 1
    idle_timeout: float | None = None
    max_calls: int | None = None
    local: bool = True  # False: its workers all join from other machines; none is started
    direct: bool = True  # its workers run here: a calling thread may use their direct channel
    window: int = 2  # calls in flight per busy worker while others wait (1: one at a time)

    @staticmethod
    def window_for(workers: int) -> int:
        """How many calls a busy worker may hold (running, then sent ahead).

        Eight with one worker, where the calls have nowhere else to go; two with several, where
        a call sent ahead to a worker that turns out slow could have run on another that came
        free (head-of-line blocking). A call sent ahead can no longer be cancelled, so the
        window is not deeper than the throughput needs: noop calls through one worker went
        5,000/s at 2, 6,000-8,500 at 4, 8,000-12,600 at 8 and no better at 16
        (benchmarks/run.py, pipelined)."""
        return 8 if workers == 1 else 2


@dataclass(eq=False)
class Ticket:
    """One call, as the scheduler sees it. Only the scheduler changes it.

    ``body`` is the broker's: the encoded call and its future, never looked at here.
    """

    call_id: int
    env: str
    name: str
    timeout: float | None = None
    retries: int = 0  # runs left after a worker crash
    pin: bytes | None = None  # the worker keeping the objects its arguments refer to
    pinned_what: str = ""
    body: Any = None
    state: CallState = CallState.QUEUED
    worker: bytes | None = None
    deadline: float | None = None
    #: Futures among its arguments: how many are not done yet, and the first that failed
    #: (``Graph.input_done``); ``deferred``: it is sent once they are (``Resolve``).
    deferred: bool = False
    inputs_left: int = 0
    input_error: Failed | None = None
    #: Identical calls merge (``Graph``): the same key while this one is pending.
    merge_key: bytes | None = None
    followers: list[Ticket] | None = None  # (made when one follows: most never have one)
    leader: Ticket | None = None

    def __repr__(self) -> str:
        return f"<Ticket {self.call_id} {self.name} env={self.env!r} {self.state.value}>"


@dataclass(frozen=True)
class Failed:
    """An input of a call that failed (or was cancelled), as its future's callback saw it.

    ``ancestor`` names the call that failed first (``prepare() in environment 'data'``),
    ``words`` its error (``ValueError: bad row``), ``via`` the input it came through, when
    that input did not run either, ``future`` the ancestor's future (its error becomes the cause).
    """

    ancestor: str
    words: str
    future: Any = None
    via: str = ""
    cancelled: bool = False


@dataclass(eq=False)
class Slot:
    """One worker, as the scheduler sees it."""

    ident: bytes
    env: str
    started: float
    state: WorkerState = WorkerState.STARTING
    joined: bool = False  # it came from another machine (not started by us)
    pid: int = 0  # for messages: known once launched (or from its hello)
    running: Ticket | None = None
    ahead: collections.deque[Ticket] = field(default_factory=collections.deque)
    pinned: collections.deque[Ticket] = field(default_factory=collections.deque)
    idle_since: float = 0.0
    last_beat: float = 0.0
    calls: int = 0
    killed_for: KillReason | None = None
    stop_by: float | None = None  # told to go: killed if still there then
    held_by: int | None = None  # the call whose calling thread uses its direct channel
    kept: set[int] = field(default_factory=set)  # ids of objects it keeps for the caller
    pending: bool = False  # launched, but waiting for resources (a Slurm queue): no deadline
    direct: bool = True  # its direct channel may be used (False: the key was not proved on it)

    @property
    def held(self) -> bool:
        """A calling thread uses its direct channel (the direct path)."""
        return self.held_by is not None

    def __repr__(self) -> str:
        return (
            f"<Slot {self.ident.decode(errors='replace')} env={self.env!r} "
            f"{self.state.value} calls={self.calls}>"
        )


@dataclass(eq=False)
class Pool:
    """The workers and queued calls of one environment."""

    env: str
    config: PoolConfig
    state: PoolState = PoolState.NEW
    error: BaseException | None = None
    queue: collections.deque[Ticket] = field(default_factory=collections.deque)
    workers: list[Slot] = field(default_factory=list)
    start_failures: int = 0
    waiting_since: float | None = None  # its calls wait for a worker from another machine


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Prepare:
    """Build (or find) the environment, then report ``prepared`` or ``prepare_failed``."""

    env: str


@dataclass(frozen=True)
class StopBuilds:
    """Interrupt builds in progress (shutting down with nothing left to build them for)."""


@dataclass(frozen=True)
class Start:
    """Launch a worker with this identity, then report ``start_failed`` if that fails."""

    env: str
    ident: bytes


@dataclass(frozen=True)
class Dispatch:
    """Send the call to the worker. If its future turns out cancelled, report
    ``dispatch_refused`` instead of sending."""

    ident: bytes
    ticket: Ticket


@dataclass(frozen=True)
class Pump:
    """Call ``pump(env)`` from the broker's thread (returned to a calling thread)."""

    env: str


@dataclass(frozen=True)
class Resolve:
    """The call's inputs are done: put their values in its arguments (in a thread that may
    decode them, not the broker's), then report ``resolved`` or ``resolve_failed``."""

    ticket: Ticket


@dataclass(frozen=True)
class Complete:
    """The call is over: ``outcome`` is its answer (opaque) or the exception it fails with."""

    ticket: Ticket
    outcome: Any
    cancelled: bool = False  # cancel its future (it never ran)


@dataclass(frozen=True)
class Shutdown:
    """Tell the worker to finish and leave."""

    ident: bytes


@dataclass(frozen=True)
class Kill:
    """Kill the worker now (its exit is reported as ``exited``)."""

    ident: bytes
    reason: KillReason


@dataclass(frozen=True)
class Forget:
    """The worker is gone: free what it held (channels, memory, records)."""

    ident: bytes


@dataclass(frozen=True)
class Ignored:
    """An event the tables do not allow; nothing changed."""

    ident: bytes
    why: str


Action = (
    Prepare
    | StopBuilds
    | Start
    | Dispatch
    | Pump
    | Resolve
    | Complete
    | Shutdown
    | Kill
    | Forget
    | Ignored
)
