"""The scheduler as a specification: events in, actions and states out.

Every test drives ``envrunner._scheduler.Scheduler`` with explicit ``now`` floats and reads the
actions it returns: no process, socket, thread or clock (h11's tests, STYLE.md). Worker
identities are the scheduler's own: ``w1``, ``w2``, ... in the order it asks to start them.

Several tests here were written first as ``xfail(strict=True)`` records of bugs they found
(calls left in a failed pool's queue, a promoted call without its clock, a checkout racing the
previous thread's let-go, a worker told to go that never left, a crash after an answer failing
a call that never began); the scheduler now passes them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envrunner._actions import (
    Action,
    CallState,
    Complete,
    Dispatch,
    Forget,
    Ignored,
    Kill,
    KillReason,
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
from envrunner._placement import SHUTDOWN_GRACE, START_FAILURE_LIMIT
from envrunner._runtime.errors import (
    EnvrunnerError,
    ReferenceLostError,
    TaskTimeoutError,
    WorkerCrashed,
    WorkerStartError,
)
from envrunner._scheduler import Scheduler

ENV = "e"
START_TIMEOUT = 10.0
W1, W2, W3 = b"w1", b"w2", b"w3"


# --------------------------------------------------------------------------- helpers


def ticket(call_id: int, env: str = ENV, **fields: Any) -> Ticket:
    return Ticket(call_id, env, f"task{call_id}", **fields)


def tickets(count: int, first: int = 1, **fields: Any) -> list[Ticket]:
    return [ticket(call_id, **fields) for call_id in range(first, first + count)]


def scheduler(
    config: PoolConfig | None = None,
    *,
    heartbeat_timeout: float | None = None,
    **others: PoolConfig,
) -> Scheduler:
    pools = {ENV: config or PoolConfig(), **others}
    return Scheduler(pools, start_timeout=START_TIMEOUT, heartbeat_timeout=heartbeat_timeout)


def submit(s: Scheduler, calls: Iterable[Ticket], now: float = 0.0) -> list[Action]:
    out: list[Action] = []
    for call in calls:
        out += s.submit(call, now)
    return out


def starts(actions: Sequence[Action]) -> list[bytes]:
    return [a.ident for a in actions if isinstance(a, Start)]


def dispatched(actions: Sequence[Action]) -> list[tuple[bytes, int]]:
    return [(a.ident, a.ticket.call_id) for a in actions if isinstance(a, Dispatch)]


def completed(actions: Sequence[Action]) -> dict[int, Any]:
    """call id -> outcome, failing on a call completed twice in one list."""
    out: dict[int, Any] = {}
    for action in actions:
        if isinstance(action, Complete):
            assert action.ticket.call_id not in out, f"call {action.ticket.call_id} twice"
            out[action.ticket.call_id] = action.outcome
    return out


def kinds(actions: Sequence[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def ids(queue: Iterable[Ticket]) -> list[int]:
    return [t.call_id for t in queue]


def running_pool(
    config: PoolConfig,
    calls: list[Ticket],
    *,
    now: float = 0.0,
    heartbeat_timeout: float | None = None,
) -> Scheduler:
    """``calls`` submitted to a ready pool whose started workers all said hello."""
    s = scheduler(config, heartbeat_timeout=heartbeat_timeout)
    submit(s, calls, now)
    actions = s.prepared(ENV, now)
    for ident in starts(actions):
        s.hello(ident, now)
    return s


def idle_pool(
    config: PoolConfig, workers: int = 1, *, heartbeat_timeout: float | None = None
) -> Scheduler:
    """A ready pool with ``workers`` idle workers (each has run one warm-up call, id 900+)."""
    warm = tickets(workers, first=901)
    s = running_pool(config, warm, heartbeat_timeout=heartbeat_timeout)
    for call in warm:
        assert call.worker is not None
        s.result(call.worker, call.call_id, "warm", 0.0)
    assert all(w.state is WorkerState.IDLE for w in s.slots.values())
    return s


def slot(s: Scheduler, ident: bytes) -> Slot:
    return s.slots[ident]


def running_id(s: Scheduler, ident: bytes) -> int | None:
    running = s.slots[ident].running
    return None if running is None else running.call_id


def gone(s: Scheduler, ident: bytes) -> bool:
    """The scheduler holds nothing of the worker any more."""
    return ident not in s.slots and all(
        ident not in {w.ident for w in p.workers} for p in s.pools.values()
    )


def snapshot(s: Scheduler, calls: Iterable[Ticket] = ()) -> object:
    """Everything an ignored event must leave as it was."""
    return (
        {
            ident: (
                sl.state,
                sl.running.call_id if sl.running else None,
                ids(sl.ahead),
                ids(sl.pinned),
                sl.calls,
                sl.idle_since,
                sl.last_beat,
                sl.killed_for,
                sl.held,
                sorted(sl.kept),
                sl.pid,
            )
            for ident, sl in s.slots.items()
        },
        {
            name: (p.state, ids(p.queue), p.start_failures, p.waiting_since, len(p.workers))
            for name, p in s.pools.items()
        },
        [(t.call_id, t.state, t.worker, t.deadline, t.retries) for t in calls],
        (s.stopping, s.stop_deadline),
    )


# --------------------------------------------------------------------------- a call's way


def test_the_first_call_prepares_the_environment_once() -> None:
    s = scheduler()
    assert s.submit(ticket(1), 0.0) == [Prepare(ENV)]
    assert s.pools[ENV].state is PoolState.PREPARING
    assert s.submit(ticket(2), 0.0) == []
    assert ids(s.pools[ENV].queue) == [1, 2]


@pytest.mark.parametrize(
    ("workers", "calls", "started"),
    [(1, 3, 1), (3, 2, 2), (3, 3, 3), (3, 7, 3)],
    ids=["one-worker", "fewer-calls-than-workers", "as-many", "more-calls-than-workers"],
)
def test_prepared_starts_one_worker_per_queued_call_up_to_workers(
    workers: int, calls: int, started: int
) -> None:
    s = scheduler(PoolConfig(workers=workers))
    submit(s, tickets(calls))
    actions = s.prepared(ENV, 1.0)
    assert actions == [Start(ENV, f"w{i}".encode()) for i in range(1, started + 1)]
    assert s.pools[ENV].state is PoolState.READY
    assert all(sl.state is WorkerState.STARTING for sl in s.slots.values())


def test_a_hello_dispatches_the_first_queued_call() -> None:
    s = scheduler()
    t1, t2 = tickets(2, timeout=5.0)
    submit(s, [t1, t2])
    s.prepared(ENV, 0.0)
    actions = s.hello(W1, 2.0)
    assert actions[0] == Dispatch(W1, t1)
    assert slot(s, W1).state is WorkerState.BUSY
    assert slot(s, W1).running is t1
    assert (t1.state, t1.worker, t1.deadline) == (CallState.RUNNING, W1, 7.0)


def test_a_result_completes_the_call_with_its_outcome_and_frees_the_worker() -> None:
    call = ticket(1)
    s = running_pool(PoolConfig(), [call])
    outcome = object()
    assert s.result(W1, 1, outcome, 3.0) == [Complete(call, outcome)]
    worker = slot(s, W1)
    assert (worker.state, worker.running, worker.calls, worker.idle_since) == (
        WorkerState.IDLE,
        None,
        1,
        3.0,
    )
    assert call.state is CallState.DONE


def test_a_result_dispatches_the_next_queued_call_to_the_freed_worker() -> None:
    t1, t2 = tickets(2)
    s = running_pool(PoolConfig(window=1), [t1, t2])
    assert ids(s.pools[ENV].queue) == [2]
    actions = s.result(W1, 1, "one", 1.0)
    assert kinds(actions) == ["Complete", "Dispatch"]
    assert dispatched(actions) == [(W1, 2)]


def test_a_failed_build_fails_the_queued_calls_and_every_later_one() -> None:
    s = scheduler()
    t1, t2, t3 = tickets(3)
    submit(s, [t1, t2])
    error = RuntimeError("no such python")
    assert completed(s.prepare_failed(ENV, error, 1.0)) == {1: error, 2: error}
    assert s.pools[ENV].state is PoolState.FAILED
    assert s.submit(t3, 2.0) == [Complete(t3, error)]


def test_calls_of_two_environments_run_in_their_own_pools() -> None:
    s = scheduler(PoolConfig(), other=PoolConfig())
    a, b = ticket(1), ticket(2, env="other")
    assert s.submit(a, 0.0) == [Prepare(ENV)]
    assert s.submit(b, 0.0) == [Prepare("other")]
    assert s.prepared("other", 0.0) == [Start("other", W1)]
    assert s.hello(W1, 0.0) == [Dispatch(W1, b)]
    assert ids(s.pools[ENV].queue) == [1]


# --------------------------------------------------------------------------- send-ahead


@pytest.mark.parametrize("window", [1, 2, 4, 8])
def test_with_a_backlog_a_busy_worker_gets_calls_sent_ahead_up_to_its_window(
    window: int,
) -> None:
    s = scheduler(PoolConfig(workers=1, window=window))
    calls = tickets(10)
    submit(s, calls)
    s.prepared(ENV, 0.0)
    actions = s.hello(W1, 0.0)
    assert dispatched(actions) == [(W1, i) for i in range(1, window + 1)]
    assert slot(s, W1).running is calls[0]
    assert ids(slot(s, W1).ahead) == list(range(2, window + 1))
    assert all(t.state is CallState.RUNNING for t in calls[:window])  # sent: no cancel now
    assert ids(s.pools[ENV].queue) == list(range(window + 1, 11))


def test_each_answer_tops_the_window_up_again() -> None:
    s = running_pool(PoolConfig(workers=1, window=3), tickets(6))
    assert ids(slot(s, W1).ahead) == [2, 3]
    actions = s.result(W1, 1, "one", 1.0)
    assert completed(actions) == {1: "one"}
    assert dispatched(actions) == [(W1, 4)]
    assert running_id(s, W1) == 2
    assert ids(slot(s, W1).ahead) == [3, 4]


def test_calls_spread_over_all_workers_before_any_is_sent_ahead() -> None:
    s = running_pool(PoolConfig(workers=2, window=2), tickets(6))
    assert {sl.running.call_id for sl in s.slots.values() if sl.running} == {1, 2}
    assert [ids(sl.ahead) for sl in s.slots.values()] == [[3], [4]]
    assert ids(s.pools[ENV].queue) == [5, 6]


def test_no_call_is_sent_ahead_while_a_worker_is_starting() -> None:
    s = scheduler(PoolConfig(workers=2, window=4))
    submit(s, tickets(5))
    assert s.prepared(ENV, 0.0) == [Start(ENV, W1), Start(ENV, W2)]
    actions = s.hello(W1, 0.0)
    assert dispatched(actions) == [(W1, 1)]  # w2 will be free for the others
    assert ids(s.pools[ENV].queue) == [2, 3, 4, 5]
    actions = s.hello(W2, 0.0)
    assert dispatched(actions) == [(W2, 2), (W1, 3), (W2, 4), (W1, 5)]


def test_no_call_is_sent_ahead_while_the_pool_may_start_more_workers() -> None:
    s = scheduler(PoolConfig(workers=2, window=4))
    submit(s, tickets(1))
    s.prepared(ENV, 0.0)
    s.hello(W1, 0.0)
    actions = submit(s, tickets(2, first=2))
    assert starts(actions) == [W2]
    assert dispatched(actions) == []


def test_no_call_is_sent_ahead_to_a_worker_holding_pinned_calls() -> None:
    s = idle_pool(PoolConfig(workers=2, window=4), workers=2)
    s.kept(W1, 7)
    a, b = ticket(1), ticket(2)
    submit(s, [a, b])  # both workers busy
    pinned = ticket(3, pin=W1, pinned_what="the frame kept by task")
    assert s.submit(pinned, 0.0) == []
    assert ids(slot(s, W1).pinned) == [3]
    actions = submit(s, tickets(3, first=4))
    assert {ident for ident, _ in dispatched(actions)} == {W2}
    assert ids(slot(s, W1).ahead) == []
    # the pinned call goes first once its worker is free
    assert dispatched(s.result(W1, 1, "a", 1.0)) == [(W1, 3)]


def test_pinned_calls_are_never_sent_ahead() -> None:
    s = idle_pool(PoolConfig(workers=1, window=4))
    s.kept(W1, 7)
    s.submit(ticket(1), 0.0)
    pinned = tickets(2, first=2, pin=W1, pinned_what="x")
    assert submit(s, pinned) == []
    assert ids(slot(s, W1).pinned) == [2, 3]
    assert dispatched(s.result(W1, 1, "a", 1.0)) == [(W1, 2)]
    assert dispatched(s.result(W1, 2, "b", 2.0)) == [(W1, 3)]


def test_a_call_sent_ahead_starts_its_timeout_when_the_call_before_is_answered() -> None:
    t1 = ticket(1, timeout=5.0)
    t2 = ticket(2, timeout=5.0)
    s = running_pool(PoolConfig(workers=1, window=2), [t1, t2], now=1.0)
    assert (t1.deadline, t2.deadline) == (6.0, None)
    assert s.next_deadline() == 6.0
    s.result(W1, 1, "one", 4.0)
    assert t2.deadline == 9.0
    assert s.next_deadline() == 9.0
    assert s.tick(8.9) == []
    assert s.tick(9.0) == [Kill(W1, KillReason.TIMEOUT)]


def test_answers_of_calls_sent_ahead_come_in_order() -> None:
    s = running_pool(PoolConfig(workers=1, window=3), tickets(3))
    before = snapshot(s)
    assert s.result(W1, 2, "two", 1.0) == [Ignored(W1, "a result for call 2; it runs 1")]
    assert snapshot(s) == before
    assert completed(s.result(W1, 1, "one", 1.0)) == {1: "one"}
    assert completed(s.result(W1, 2, "two", 1.0)) == {2: "two"}
    assert completed(s.result(W1, 3, "three", 1.0)) == {3: "three"}
    assert slot(s, W1).state is WorkerState.IDLE


# --------------------------------------------------------------------------- crashes

CRASH_TAIL = ["Fatal Python error: Segmentation fault"]


@pytest.mark.parametrize(
    ("started", "answer_lost", "crashed", "requeued"),
    [
        (1, [], 1, [2, 3, 4]),
        (2, [1], 2, [3, 4]),
        (3, [1, 2], 3, [4]),
        (0, [], 1, [2, 3, 4]),
    ],
    ids=["running-the-first", "running-the-second", "running-the-last", "no-record"],
)
def test_a_crash_fails_only_the_call_that_ran(
    started: int, answer_lost: list[int], crashed: int, requeued: list[int]
) -> None:
    # w1 runs call 1 with 2 and 3 sent ahead; 4 waits in the queue.
    s = running_pool(PoolConfig(workers=1, window=3), tickets(4))
    s.launched(W1, 4242)
    assert ids(slot(s, W1).ahead) == [2, 3]

    actions = s.exited(W1, -11, started, CRASH_TAIL, 5.0)

    outcomes = completed(actions)
    assert sorted(outcomes) == sorted([*answer_lost, crashed])
    for call_id in answer_lost:
        error = outcomes[call_id]
        assert isinstance(error, WorkerCrashed)
        assert "its value is lost" in str(error)
        assert error.call == f"task{call_id}"
    error = outcomes[crashed]
    assert isinstance(error, WorkerCrashed)
    assert "its value is lost" not in str(error)
    assert (error.pid, error.returncode, error.call) == (4242, -11, f"task{crashed}")
    assert error.stderr_tail == tuple(CRASH_TAIL)
    assert Forget(W1) in actions
    assert W1 not in s.slots
    # calls it never started go back to the front of the queue, in order, for a new worker
    assert ids(s.pools[ENV].queue) == requeued
    assert starts(actions) == [W2]
    assert dispatched(s.hello(W2, 6.0))[0] == (W2, requeued[0])


def test_a_crash_leaves_the_other_workers_calls_alone() -> None:
    s = running_pool(PoolConfig(workers=2, window=1), tickets(2))
    actions = s.exited(W1, -9, 1, [], 1.0)
    assert list(completed(actions)) == [1]
    assert slot(s, W2).state is WorkerState.BUSY
    assert completed(s.result(W2, 2, "fine", 2.0)) == {2: "fine"}


@pytest.mark.parametrize(
    ("kill", "retries", "expected"),
    [
        (None, 1, "again"),
        (KillReason.HEARTBEAT, 1, "again"),
        (None, 0, WorkerCrashed),
        (KillReason.HEARTBEAT, 0, WorkerCrashed),
        (KillReason.TIMEOUT, 3, TaskTimeoutError),
        (KillReason.INTERRUPTED, 3, CancelledError),
        (KillReason.SHUTDOWN, 3, WorkerCrashed),
    ],
    ids=[
        "crash-with-retries",
        "hung-with-retries",
        "crash",
        "hung",
        "timeout-never-retried",
        "interrupt-never-retried",
        "shutdown-never-retried",
    ],
)
def test_what_a_crashed_call_becomes(
    kill: KillReason | None, retries: int, expected: str | type[BaseException]
) -> None:
    call = ticket(1, retries=retries, timeout=30.0)
    s = running_pool(PoolConfig(workers=1, window=2), [call, ticket(2)], heartbeat_timeout=30.0)
    if kill is not None:
        assert s.kill(W1, kill) == [Kill(W1, kill)]
        assert slot(s, W1).state is WorkerState.STOPPING
    actions = s.exited(W1, -9, 1, [], 1.0)
    if expected == "again":
        assert 1 not in completed(actions)
        assert (call.state, call.retries, call.worker, call.deadline) == (
            CallState.QUEUED,
            retries - 1,
            None,
            None,
        )
        assert ids(s.pools[ENV].queue) == [1, 2]  # it runs first, then the one sent ahead
        assert dispatched(s.hello(W2, 2.0))[0] == (W2, 1)
        assert call.deadline == 32.0
    else:
        assert isinstance(expected, type)
        assert type(completed(actions)[1]) is expected
        assert ids(s.pools[ENV].queue) == [2]


def test_a_hung_worker_is_killed_and_its_call_fails_naming_heartbeats() -> None:
    s = running_pool(PoolConfig(), [ticket(1)], heartbeat_timeout=30.0)
    assert s.next_deadline() == 30.0
    s.heartbeat(W1, 20.0)
    assert s.next_deadline() == 50.0
    assert s.tick(49.0) == []
    assert s.tick(50.0) == [Kill(W1, KillReason.HEARTBEAT)]
    assert s.tick(51.0) == []  # killed once
    error = completed(s.exited(W1, -9, 1, [], 51.0))[1]
    assert isinstance(error, WorkerCrashed)
    assert "heartbeats for 30s" in str(error)


def test_a_call_past_its_deadline_fails_with_a_timeout_and_is_not_retried() -> None:
    call = ticket(1, timeout=5.0, retries=2)
    s = running_pool(PoolConfig(), [call, ticket(2)], now=1.0)
    assert s.next_deadline() == 6.0
    assert s.tick(5.9) == []
    assert s.tick(6.0) == [Kill(W1, KillReason.TIMEOUT)]
    before = snapshot(s)
    assert s.result(W1, 1, "too late", 6.1) == [
        Ignored(W1, "a result for call 1, which it was not running")
    ]
    assert snapshot(s) == before
    actions = s.exited(W1, -9, 1, [], 6.2)
    error = completed(actions)[1]
    assert isinstance(error, TaskTimeoutError)
    assert error.timeout == 5.0
    assert starts(actions) == [W2]  # call 2 gets a new worker


def test_pinned_calls_fail_with_reference_lost_when_their_worker_dies() -> None:
    s = idle_pool(PoolConfig(workers=1))
    s.kept(W1, 5)
    s.submit(ticket(1), 0.0)
    pinned = tickets(2, first=2, pin=W1, pinned_what="the model kept by load")
    submit(s, pinned)
    actions = s.exited(W1, -9, 1, [], 1.0)
    outcomes = completed(actions)
    assert isinstance(outcomes[1], WorkerCrashed)
    for call_id in (2, 3):
        assert isinstance(outcomes[call_id], ReferenceLostError)
        assert "the model kept by load" in str(outcomes[call_id])
    assert gone(s, W1)
    assert isinstance(
        completed(s.submit(ticket(4, pin=W1, pinned_what="x"), 2.0))[4], ReferenceLostError
    )


def test_a_running_pinned_call_with_retries_fails_with_reference_lost() -> None:
    s = idle_pool(PoolConfig(workers=1))
    s.kept(W1, 5)
    call = ticket(1, pin=W1, pinned_what="x", retries=2)
    s.submit(call, 0.0)
    assert slot(s, W1).running is call
    error = completed(s.exited(W1, -9, 1, [], 1.0))[1]
    assert isinstance(error, ReferenceLostError)


def test_a_worker_that_exits_while_idle_is_forgotten_and_replaced_on_demand() -> None:
    s = idle_pool(PoolConfig())
    assert s.exited(W1, -9, 901, [], 1.0) == [Forget(W1)]
    assert s.submit(ticket(1), 2.0) == [Start(ENV, W2)]


def test_an_exit_reported_twice_is_reported_once() -> None:
    s = running_pool(PoolConfig(), [ticket(1)])
    assert list(completed(s.exited(W1, -9, 1, [], 1.0))) == [1]
    assert s.exited(W1, -9, 1, [], 1.0) == []


def test_a_crash_between_two_calls_fails_none_of_them() -> None:
    s = running_pool(PoolConfig(workers=1, window=3), tickets(3))
    s.result(W1, 1, "one", 1.0)  # w1 now runs 2, holds 3
    actions = s.exited(W1, -9, 1, [], 2.0)  # its record: call 1 was the last it started
    assert completed(actions) == {}
    assert ids(s.pools[ENV].queue) == [2, 3]


# --------------------------------------------------------------------------- recycling


def test_a_worker_that_served_max_calls_is_shut_down_and_replaced() -> None:
    s = scheduler(PoolConfig(workers=1, window=8, max_calls=2))
    calls = tickets(5)
    submit(s, calls)
    s.prepared(ENV, 0.0)
    # no call is sent ahead past the limit
    assert dispatched(s.hello(W1, 0.0)) == [(W1, 1), (W1, 2)]
    assert s.result(W1, 1, "one", 1.0) == [Complete(calls[0], "one")]
    actions = s.result(W1, 2, "two", 2.0)
    assert actions == [Shutdown(W1), Complete(calls[1], "two"), Start(ENV, W2)]
    assert slot(s, W1).state is WorkerState.STOPPING
    assert s.exited(W1, 0, 2, [], 3.0) == [Forget(W1)]
    assert dispatched(s.hello(W2, 4.0)) == [(W2, 3), (W2, 4)]


def test_a_worker_keeping_objects_is_not_recycled() -> None:
    s = running_pool(PoolConfig(max_calls=1), [ticket(1)])
    s.kept(W1, 3)
    assert kinds(s.result(W1, 1, "kept", 1.0)) == ["Complete"]
    assert slot(s, W1).state is WorkerState.IDLE
    s.released(W1, [3])
    assert slot(s, W1).kept == set()


def test_an_idle_worker_is_shut_down_after_idle_timeout() -> None:
    s = idle_pool(PoolConfig(idle_timeout=20.0))
    assert s.next_deadline() == 20.0
    assert s.tick(19.9) == []
    assert s.tick(20.0) == [Shutdown(W1)]
    assert slot(s, W1).state is WorkerState.STOPPING


def test_an_idle_worker_keeping_objects_stays() -> None:
    s = idle_pool(PoolConfig(idle_timeout=20.0))
    s.kept(W1, 11)
    assert s.next_deadline() is None
    assert s.tick(1000.0) == []
    s.released(W1, [11])
    assert s.tick(1000.0) == [Shutdown(W1)]


def test_idle_time_counts_from_the_last_answer() -> None:
    s = idle_pool(PoolConfig(idle_timeout=20.0))
    s.submit(ticket(1), 10.0)
    assert s.tick(25.0) == []
    s.result(W1, 1, "one", 15.0)
    assert s.next_deadline() == 35.0
    assert s.tick(35.0) == [Shutdown(W1)]


def test_a_recycled_worker_that_does_not_leave_is_killed_after_the_grace() -> None:
    s = idle_pool(PoolConfig(idle_timeout=20.0))
    assert s.tick(20.0) == [Shutdown(W1)]
    assert s.next_deadline() == 20.0 + SHUTDOWN_GRACE
    actions = s.tick(20.0 + SHUTDOWN_GRACE)
    assert [a.ident for a in actions if isinstance(a, Kill)] == [W1]


# --------------------------------------------------------------------------- starting workers


def fail_start(s: Scheduler, ident: bytes, how: str, now: float) -> list[Action]:
    """The worker ``ident`` (just launched) does not come up, in one of three ways."""
    if how == "launch-fails":
        return s.start_failed(ident, WorkerStartError(ENV, 0, "OSError: no such file"), now)
    if how == "exits-before-hello":
        return s.exited(ident, 1, 0, ["ImportError: no module named zmq"], now)
    assert how == "no-hello-in-time"
    return s.tick(slot(s, ident).started + START_TIMEOUT)


START_FAILURES = ["launch-fails", "exits-before-hello", "no-hello-in-time"]


@pytest.mark.parametrize("how", START_FAILURES)
def test_a_worker_that_does_not_come_up_is_started_again(how: str) -> None:
    s = scheduler()
    s.submit(ticket(1), 0.0)
    s.prepared(ENV, 0.0)
    actions = fail_start(s, W1, how, 1.0)
    assert starts(actions) == [W2]
    assert completed(actions) == {}
    assert s.pools[ENV].start_failures == 1
    assert s.pools[ENV].state is PoolState.READY


@pytest.mark.parametrize("how", START_FAILURES)
def test_a_pool_gives_up_after_start_failure_limit_failures_in_a_row(how: str) -> None:
    """The fix for "a launch that fails with OSError leaves the call queued forever"."""
    s = scheduler()
    calls = tickets(3)
    submit(s, calls)
    s.prepared(ENV, 0.0)
    actions: list[Action] = []
    for attempt in range(1, START_FAILURE_LIMIT + 1):
        actions = fail_start(s, f"w{attempt}".encode(), how, float(attempt))
    assert starts(actions) == []
    assert s.pools[ENV].state is PoolState.FAILED
    outcomes = completed(actions)
    assert sorted(outcomes) == [1, 2, 3]
    for error in outcomes.values():
        assert isinstance(error, WorkerStartError)
        assert f"gave up after {START_FAILURE_LIMIT} attempts in a row" in str(error)
    later = ticket(4)
    assert kinds(s.submit(later, 9.0)) == ["Complete"]
    assert later.state is CallState.DONE


def test_a_start_timeout_kill_counts_once() -> None:
    s = scheduler()
    s.submit(ticket(1), 0.0)
    s.prepared(ENV, 0.0)
    assert s.next_deadline() == START_TIMEOUT
    assert s.tick(START_TIMEOUT) == [Kill(W1, KillReason.START_TIMEOUT), Start(ENV, W2)]
    assert s.exited(W1, -9, 0, [], START_TIMEOUT) == [Forget(W1)]
    assert s.pools[ENV].start_failures == 1


def test_a_hello_resets_the_count_of_start_failures() -> None:
    s = scheduler()
    submit(s, tickets(2))
    s.prepared(ENV, 0.0)
    for ident in (W1, W2):
        fail_start(s, ident, "launch-fails", 0.0)
    s.hello(W3, 1.0)
    assert s.pools[ENV].start_failures == 0
    s.exited(W3, -9, 1, [], 2.0)  # w4 starts for call 2
    for ident in (b"w4", b"w5"):
        fail_start(s, ident, "launch-fails", 3.0)
    assert s.pools[ENV].state is PoolState.READY


def test_an_incompatible_worker_fails_the_pool_at_once() -> None:
    s = scheduler()
    submit(s, tickets(2))
    s.prepared(ENV, 0.0)
    error = WorkerStartError(ENV, 0, "it speaks protocol 9")
    actions = s.incompatible(W1, error, 1.0)
    assert actions[0] == Kill(W1, KillReason.PROTOCOL)
    assert sorted(completed(actions)) == [1, 2]
    assert s.pools[ENV].state is PoolState.FAILED
    assert s.exited(W1, -9, 0, [], 2.0) == [Forget(W1)]


def test_a_call_retried_after_its_pool_failed_fails_with_the_pools_error() -> None:
    """A retried call (or one sent ahead) goes back to a pool that failed meanwhile: it fails
    with the pool's error rather than wait forever in a queue nobody serves (and keep
    shutdown from finishing)."""
    s = scheduler(PoolConfig(workers=2))
    call = ticket(1, retries=1)
    s.submit(call, 0.0)
    s.prepared(ENV, 0.0)
    s.hello(W1, 0.0)  # w1 runs call 1
    s.submit(ticket(2), 0.0)  # starts w2
    for attempt in range(2, 2 + START_FAILURE_LIMIT):
        fail_start(s, f"w{attempt}".encode(), "launch-fails", 1.0)
    assert s.pools[ENV].state is PoolState.FAILED  # call 2 failed; w1 still runs call 1
    error = completed(s.exited(W1, -9, 1, [], 2.0)).get(1)
    assert isinstance(error, WorkerStartError)
    assert error is s.pools[ENV].error
    assert not s.pools[ENV].queue
    s.shutdown(False, 3.0)
    assert s.finished()


def test_a_bad_message_from_a_working_worker_costs_that_worker_only() -> None:
    """A ProtocolError from a worker that already said hello kills it; its pool stays READY, the
    call it ran fails, and the calls sent ahead (never started) run on a new worker."""
    calls = tickets(3)
    s = running_pool(PoolConfig(workers=1, window=3), calls)
    assert s.incompatible(W1, WorkerStartError(ENV, 0, "a malformed message"), 1.0) == [
        Kill(W1, KillReason.PROTOCOL)
    ]
    actions = s.exited(W1, -9, 1, [], 2.0)
    assert s.pools[ENV].state is PoolState.READY
    assert [c.state for c in calls] == [CallState.DONE, CallState.QUEUED, CallState.QUEUED]
    assert any(isinstance(a, Start) for a in actions)


def test_launched_records_the_pid_for_messages() -> None:
    s = scheduler()
    s.submit(ticket(1), 0.0)
    s.prepared(ENV, 0.0)
    s.launched(W1, 777)
    assert slot(s, W1).pid == 777
    s.launched(b"nobody", 1)  # unknown: nothing happens
    assert list(s.slots) == [W1]


# --------------------------------------------------------------------------- next_deadline


def test_next_deadline_is_none_with_nothing_to_wait_for() -> None:
    assert scheduler().next_deadline() is None
    assert idle_pool(PoolConfig()).next_deadline() is None


def test_next_deadline_is_the_earliest_of_all_clocks() -> None:
    s = scheduler(PoolConfig(workers=2, idle_timeout=100.0), heartbeat_timeout=30.0)
    submit(s, [ticket(1, timeout=50.0), ticket(2)], 0.0)
    s.prepared(ENV, 0.0)  # w1, w2 starting: start timeout 10
    assert s.next_deadline() == START_TIMEOUT
    s.hello(W1, 5.0)  # runs call 1 (deadline 55), heartbeat due 35; w2 still starting (10)
    assert s.next_deadline() == START_TIMEOUT
    s.hello(W2, 6.0)  # runs call 2: heartbeat 36
    assert s.next_deadline() == 35.0
    s.heartbeat(W1, 40.0)
    s.heartbeat(W2, 40.0)
    assert s.next_deadline() == 55.0  # call 1's deadline comes before the heartbeats (70)
    s.result(W2, 2, "two", 41.0)
    s.result(W1, 1, "one", 42.0)
    assert s.next_deadline() == 70.0  # heartbeats; idle ones at 141, 142


# --------------------------------------------------------------------------- the direct path


def test_a_calling_thread_checks_out_an_idle_worker() -> None:
    s = idle_pool(PoolConfig())
    call = ticket(1)
    got = s.checkout(call, 1.0)
    assert got is slot(s, W1)
    assert (got.state, got.held, got.running) == (WorkerState.DIRECT, True, call)
    assert (call.state, call.worker) == (CallState.RUNNING, W1)


def _not_ready() -> tuple[Scheduler, Ticket]:
    s = scheduler()
    return s, ticket(1)


def _queued() -> tuple[Scheduler, Ticket]:
    s = scheduler()
    s.submit(ticket(50), 0.0)
    return s, ticket(1)


def _calls_queued_behind_a_busy_worker() -> tuple[Scheduler, Ticket]:
    s = idle_pool(PoolConfig(workers=2, window=1), workers=2)
    submit(s, tickets(3, first=50))  # w1, w2 busy, 52 queued
    return s, ticket(1)


def _all_busy() -> tuple[Scheduler, Ticket]:
    s = idle_pool(PoolConfig())
    s.submit(ticket(50), 0.0)
    return s, ticket(1)


def _shutting_down() -> tuple[Scheduler, Ticket]:
    s = idle_pool(PoolConfig())
    first = ticket(50)
    s.checkout(first, 0.0)
    s.shutdown(False, 0.1)
    assert s.answered_direct(W1, first, 0.2) == [Pump(ENV)]  # idle until the broker pumps
    s.let_go(W1)
    return s, ticket(1)


def _pinned_elsewhere() -> tuple[Scheduler, Ticket]:
    s = idle_pool(PoolConfig(workers=2, window=1), workers=2)
    s.kept(W1, 1)
    s.submit(ticket(50), 0.0)  # runs on w1
    return s, ticket(1, pin=W1, pinned_what="x")


def _starting() -> tuple[Scheduler, Ticket]:
    s = scheduler()
    s.submit(ticket(50), 0.0)
    s.prepared(ENV, 0.0)
    s.cancel(s.pools[ENV].queue[0], 0.0)  # w1 still starting, nothing queued
    return s, ticket(1)


@pytest.mark.parametrize(
    "situation",
    [
        _not_ready,
        _queued,
        _calls_queued_behind_a_busy_worker,
        _all_busy,
        _shutting_down,
        _pinned_elsewhere,
        _starting,
    ],
    ids=lambda f: f.__name__.strip("_").replace("_", "-"),
)
def test_no_checkout_unless_ready_idle_and_nothing_queued(
    situation: Callable[[], tuple[Scheduler, Ticket]],
) -> None:
    s, call = situation()
    before = snapshot(s, [call])
    assert s.checkout(call, 1.0) is None
    assert snapshot(s, [call]) == before


def test_a_pinned_call_checks_out_its_own_worker() -> None:
    s = idle_pool(PoolConfig(workers=2), workers=2)
    s.kept(W2, 1)
    got = s.checkout(ticket(1, pin=W2, pinned_what="x"), 0.0)
    assert got is not None
    assert got.ident == W2


def test_a_worker_from_another_machine_is_never_checked_out() -> None:
    s = scheduler(PoolConfig(local=False))
    s.joined(W1, ENV, 5, 0.0)
    s.hello(W1, 0.0)
    assert s.checkout(ticket(1), 1.0) is None


def test_an_answered_direct_call_frees_the_worker() -> None:
    s = idle_pool(PoolConfig())
    call = ticket(1)
    s.checkout(call, 1.0)
    assert s.answered_direct(W1, call, 2.0) == []
    assert (slot(s, W1).state, slot(s, W1).calls, slot(s, W1).idle_since) == (
        WorkerState.IDLE,
        2,
        2.0,
    )
    assert call.state is CallState.DONE
    assert s.let_go(W1) == []
    assert slot(s, W1).held is False


def test_calls_queued_during_a_direct_call_are_pumped_by_the_broker() -> None:
    s = idle_pool(PoolConfig())
    call = ticket(1)
    s.checkout(call, 1.0)
    waiting = ticket(2)
    assert s.submit(waiting, 1.5) == []  # its only worker is held: it waits
    assert s.answered_direct(W1, call, 2.0) == [Pump(ENV)]
    s.let_go(W1)
    assert s.pump(ENV, 2.1) == [Dispatch(W1, waiting)]


def test_a_direct_call_at_max_calls_returns_shutdown() -> None:
    s = idle_pool(PoolConfig(max_calls=2))
    call = ticket(1)
    s.checkout(call, 1.0)
    assert s.answered_direct(W1, call, 2.0) == [Shutdown(W1)]
    assert slot(s, W1).state is WorkerState.STOPPING


def test_a_worker_that_dies_while_held_is_forgotten_when_let_go() -> None:
    s = idle_pool(PoolConfig())
    call = ticket(1)
    s.checkout(call, 1.0)
    actions = s.exited(W1, -11, 0, [], 2.0)
    assert Forget(W1) not in actions
    assert isinstance(completed(actions)[1], WorkerCrashed)
    assert slot(s, W1).state is WorkerState.DEAD
    assert s.answered_direct(W1, call, 2.1) == []
    assert s.let_go(W1) == [Forget(W1)]
    assert W1 not in s.slots
    assert s.let_go(W1) == []


def test_a_direct_call_past_its_deadline_fails_with_a_timeout() -> None:
    s = idle_pool(PoolConfig())
    call = ticket(1, timeout=3.0, retries=1)
    s.checkout(call, 1.0)
    assert s.kill(W1, KillReason.TIMEOUT) == [Kill(W1, KillReason.TIMEOUT)]
    error = completed(s.exited(W1, -9, 0, [], 4.0))[1]
    assert isinstance(error, TaskTimeoutError)


def test_a_worker_is_never_forgotten_while_a_calling_thread_holds_it() -> None:
    s = idle_pool(PoolConfig())
    first, second = ticket(1), ticket(2)
    assert s.checkout(first, 1.0) is not None  # thread A
    s.answered_direct(W1, first, 2.0)  # thread A, under the lock; then it releases the lock
    got = s.checkout(second, 2.1)  # thread B takes the lock before A lets go
    s.let_go(W1, first.call_id)  # thread A
    if got is None:
        return  # what should happen: B goes through the broker instead
    actions = s.exited(W1, -9, 0, [], 3.0)  # the worker dies under thread B
    assert Forget(W1) not in actions
    assert s.let_go(W1, second.call_id) == [Forget(W1)]  # thread B


# --------------------------------------------------------------------------- remote pools


def test_a_remote_pool_neither_prepares_nor_starts_and_its_calls_wait() -> None:
    s = scheduler(PoolConfig(local=False))
    call = ticket(1)
    assert s.submit(call, 0.0) == []
    assert s.pools[ENV].state is PoolState.READY
    assert ids(s.pools[ENV].queue) == [1]
    assert s.next_deadline() == START_TIMEOUT


def test_a_worker_that_joins_a_remote_pool_takes_its_calls() -> None:
    s = scheduler(PoolConfig(local=False))
    submit(s, tickets(2))
    got = s.joined(b"far", ENV, 99, 3.0)
    assert got is not None
    assert (got.joined, got.pid, got.state) == (True, 99, WorkerState.STARTING)
    assert dispatched(s.hello(b"far", 3.5)) == [(b"far", 1)]  # never sent ahead
    # call 2 waits behind a live worker: the wait for one to join does not fail it
    assert s.tick(3.5 + START_TIMEOUT) == []
    assert dispatched(s.result(b"far", 1, "one", 20.0)) == [(b"far", 2)]


def test_calls_of_a_remote_pool_fail_when_nobody_joins_in_time() -> None:
    s = scheduler(PoolConfig(local=False))
    submit(s, tickets(2), now=1.0)
    assert s.tick(START_TIMEOUT + 0.9) == []
    outcomes = completed(s.tick(START_TIMEOUT + 1.0))
    assert sorted(outcomes) == [1, 2]
    for error in outcomes.values():
        assert isinstance(error, WorkerStartError)
        assert "no worker on another machine joined within 10s" in str(error)
    assert not s.pools[ENV].queue
    assert s.next_deadline() is None


@pytest.mark.parametrize(
    ("config", "env", "stopping", "taken"),
    [
        (PoolConfig(local=True), ENV, False, False),
        (PoolConfig(local=False), "elsewhere", False, False),
        (PoolConfig(local=False), ENV, True, False),
        (PoolConfig(local=False), ENV, False, True),
    ],
    ids=["local-pool", "unknown-env", "shutting-down", "identity-taken"],
)
def test_a_joining_worker_is_refused(
    config: PoolConfig, env: str, stopping: bool, taken: bool
) -> None:
    s = scheduler(config)
    if taken:
        assert s.joined(b"far", ENV, 1, 0.0) is not None
    if stopping:
        s.shutdown(False, 0.0)
    before = snapshot(s)
    assert s.joined(b"far", env, 2, 0.0) is None
    assert snapshot(s) == before


# --------------------------------------------------------------------------- shutting down


def test_shutdown_lets_queued_calls_run_then_lets_every_worker_go() -> None:
    s = scheduler(PoolConfig(workers=2, window=1))
    calls = tickets(3)
    submit(s, calls)
    s.prepared(ENV, 0.0)
    s.hello(W1, 0.0)  # w2 still starting
    assert s.shutdown(False, 1.0) == []
    assert not s.finished()
    assert dispatched(s.hello(W2, 2.0)) == [(W2, 2)]
    assert dispatched(s.result(W1, 1, "one", 3.0)) == [(W1, 3)]
    # nothing left to queue: a worker that answers is let go, the stop clock waits for w1
    assert s.result(W2, 2, "two", 4.0) == [Complete(calls[1], "two"), Shutdown(W2)]
    assert s.stop_deadline is None
    assert s.result(W1, 3, "three", 5.0) == [Complete(calls[2], "three"), Shutdown(W1)]
    assert s.next_deadline() == 4.0 + SHUTDOWN_GRACE  # w2 was told to go first
    s.exited(W1, 0, 3, [], 6.0)
    assert not s.finished()
    s.exited(W2, 0, 2, [], 6.0)
    assert s.finished()


def test_shutdown_kills_workers_still_starting_when_nothing_waits() -> None:
    s = scheduler(PoolConfig(workers=2))
    submit(s, tickets(2))
    s.prepared(ENV, 0.0)
    s.hello(W1, 0.0)
    s.cancel(s.pools[ENV].queue[0], 0.0)
    actions = s.shutdown(False, 1.0)
    assert actions == [Kill(W2, KillReason.SHUTDOWN)]
    assert s.stop_deadline is None  # call 1 still runs
    actions = s.result(W1, 1, "one", 2.0)
    assert Shutdown(W1) in actions
    assert s.stop_deadline == 2.0 + SHUTDOWN_GRACE


def test_workers_that_do_not_leave_in_time_are_killed() -> None:
    s = idle_pool(PoolConfig(workers=2), workers=2)
    assert s.shutdown(False, 1.0) == [Shutdown(W1), Shutdown(W2)]
    assert s.next_deadline() == 1.0 + SHUTDOWN_GRACE
    s.exited(W1, 0, 0, [], 2.0)
    assert s.tick(1.0 + SHUTDOWN_GRACE) == [Kill(W2, KillReason.SHUTDOWN)]
    assert s.next_deadline() == 1.0 + 2 * SHUTDOWN_GRACE
    assert not s.finished()
    s.exited(W2, -9, 0, [], 7.0)
    assert s.finished()


def test_shutdown_with_kill_cancels_queued_calls_and_stops_running_ones() -> None:
    s = scheduler(PoolConfig(workers=2, window=2), other=PoolConfig())
    calls = tickets(6)
    submit(s, calls)
    s.prepared(ENV, 0.0)
    s.hello(W1, 0.0)
    s.hello(W2, 0.0)  # w1 runs 1 (3 ahead), w2 runs 2 (4 ahead); 5, 6 queued
    building = ticket(7, env="other")
    s.submit(building, 0.0)  # its environment is being built

    actions = s.shutdown(True, 1.0, kill=True)

    assert StopBuilds() in actions
    outcomes = completed(actions)
    assert sorted(outcomes) == [1, 2, 3, 4, 5, 6, 7]
    by_id = {a.ticket.call_id: a for a in actions if isinstance(a, Complete)}
    for call_id in (5, 6, 7):  # never given to a worker: their futures are cancelled
        assert by_id[call_id].cancelled
        assert isinstance(by_id[call_id].outcome, CancelledError)
    for call_id in (1, 2, 3, 4):  # given to a worker: stopped, with an error that says so
        assert not by_id[call_id].cancelled
        outcome = by_id[call_id].outcome
        assert isinstance(outcome, EnvrunnerError) and "stopped" in str(outcome)
        assert not isinstance(outcome, CancelledError)
    assert Kill(W1, KillReason.SHUTDOWN) in actions
    assert Kill(W2, KillReason.SHUTDOWN) in actions
    assert s.exited(W1, -9, 1, [], 2.0) == [Forget(W1)]
    assert s.exited(W2, -9, 3, [], 2.0) == [Forget(W2)]
    assert s.finished()


def test_shutdown_with_cancel_lets_running_calls_finish() -> None:
    """``Executor.shutdown(cancel_futures=True)``: what waits is cancelled, what runs finishes."""
    s = scheduler(PoolConfig(workers=1, window=2))
    calls = tickets(4)
    submit(s, calls)
    s.prepared(ENV, 0.0)
    s.hello(W1, 0.0)  # w1 runs 1, 2 sent ahead; 3, 4 queued
    actions = s.shutdown(True, 1.0)
    assert sorted(completed(actions)) == [3, 4]
    assert not any(isinstance(a, Kill) for a in actions)
    assert completed(s.result(W1, 1, "one", 2.0)) == {1: "one"}
    assert completed(s.result(W1, 2, "two", 3.0)) == {2: "two"}


def test_shutdown_stops_builds_nobody_waits_for() -> None:
    s = scheduler()
    call = ticket(1)
    s.submit(call, 0.0)
    s.cancel(call, 0.0)
    assert s.shutdown(False, 1.0) == [StopBuilds()]


def test_shutdown_with_cancel_stops_builds_once() -> None:
    s = scheduler()
    s.submit(ticket(1), 0.0)
    assert kinds(s.shutdown(True, 1.0)).count("StopBuilds") == 1


def test_fail_everything_completes_every_call_once() -> None:
    s = scheduler(PoolConfig(workers=1, window=2))
    submit(s, tickets(4))
    s.prepared(ENV, 0.0)
    s.hello(W1, 0.0)
    error = RuntimeError("broker died")
    assert completed(s.fail_everything(error)) == {1: error, 2: error, 3: error, 4: error}
    assert s.fail_everything(error) == []


# --------------------------------------------------------------------------- refused events


Event = Callable[[], list[Action]]


def _result_from_unknown(s: Scheduler) -> Event:
    return lambda: s.result(b"nobody", 1, "x", 1.0)


def _result_for_another_call(s: Scheduler) -> Event:
    return lambda: s.result(W1, 99, "x", 1.0)


def _result_from_idle(s: Scheduler) -> Event:
    return lambda: s.result(W2, 2, "x", 1.0)


def _result_from_direct(s: Scheduler) -> Event:
    s.checkout(ticket(2), 0.6)  # w2 runs call 2 for a calling thread
    return lambda: s.result(W2, 2, "x", 1.0)


def _result_from_stopping(s: Scheduler) -> Event:
    s.kill(W1, KillReason.INTERRUPTED)
    return lambda: s.result(W1, 1, "x", 1.0)


def _hello_from_idle(s: Scheduler) -> Event:
    return lambda: s.hello(W2, 1.0)


def _hello_from_busy(s: Scheduler) -> Event:
    return lambda: s.hello(W1, 1.0)


def _hello_from_unknown(s: Scheduler) -> Event:
    return lambda: s.hello(b"nobody", 1.0)


def _hello_from_stopping(s: Scheduler) -> Event:
    s.tick(1000.0)  # idle timeout: w2 told to go
    assert slot(s, W2).state is WorkerState.STOPPING
    return lambda: s.hello(W2, 1000.0)


@pytest.mark.parametrize(
    "situation",
    [
        _result_from_unknown,
        _result_for_another_call,
        _result_from_idle,
        _result_from_direct,
        _result_from_stopping,
        _hello_from_idle,
        _hello_from_busy,
        _hello_from_unknown,
        _hello_from_stopping,
    ],
    ids=lambda f: f.__name__.strip("_").replace("_", "-"),
)
def test_an_event_the_tables_do_not_allow_is_ignored_and_changes_nothing(
    situation: Callable[[Scheduler], Event],
) -> None:
    s = idle_pool(PoolConfig(workers=2, window=1, idle_timeout=500.0), workers=2)
    call = ticket(1)
    s.submit(call, 0.5)  # w1 runs call 1, w2 idle
    event = situation(s)
    before = snapshot(s, [call])
    actions = event()
    assert len(actions) == 1
    assert isinstance(actions[0], Ignored)
    assert actions[0].why
    assert snapshot(s, [call]) == before


def test_events_for_unknown_workers_do_nothing() -> None:
    s = idle_pool(PoolConfig())
    before = snapshot(s)
    error = WorkerStartError(ENV, 0, "x")
    assert s.start_failed(b"nobody", error, 1.0) == []
    assert s.incompatible(b"nobody", error, 1.0) == []
    assert s.kill(b"nobody", KillReason.TIMEOUT) == []
    assert s.exited(b"nobody", 0, 0, [], 1.0) == []
    assert s.let_go(b"nobody") == []
    s.heartbeat(b"nobody", 1.0)
    s.kept(b"nobody", 1)
    s.released(b"nobody", [1])
    assert snapshot(s) == before


def test_a_start_failure_for_a_worker_that_said_hello_is_ignored() -> None:
    call = ticket(1)
    s = running_pool(PoolConfig(), [call])
    before = snapshot(s, [call])
    actions = s.start_failed(W1, WorkerStartError(ENV, 0, "OSError"), 1.0)
    assert kinds(actions) == ["Ignored"]
    assert snapshot(s, [call]) == before


# --------------------------------------------------------------------------- cancel


def test_cancelling_a_queued_call_completes_it_as_cancelled() -> None:
    s = scheduler()
    t1, t2, t3 = tickets(3)
    submit(s, [t1, t2, t3])
    actions = s.cancel(t2, 1.0)
    assert len(actions) == 1
    action = actions[0]
    assert isinstance(action, Complete)
    assert (action.ticket, action.cancelled) == (t2, True)
    assert isinstance(action.outcome, CancelledError)
    assert ids(s.pools[ENV].queue) == [1, 3]
    assert s.cancel(t2, 1.0) == []  # twice: once


def test_cancelling_a_pinned_call_that_waits_for_its_worker() -> None:
    s = idle_pool(PoolConfig())
    s.kept(W1, 1)
    s.submit(ticket(1), 0.0)
    pinned = ticket(2, pin=W1, pinned_what="x")
    s.submit(pinned, 0.0)
    actions = s.cancel(pinned, 1.0)
    assert [(a.ticket, a.cancelled) for a in actions if isinstance(a, Complete)] == [(pinned, True)]
    assert ids(slot(s, W1).pinned) == []


def test_a_running_or_sent_ahead_call_cannot_be_cancelled() -> None:
    calls = tickets(2)
    s = running_pool(PoolConfig(workers=1, window=2), calls)
    before = snapshot(s, calls)
    assert s.cancel(calls[0], 1.0) == []
    assert s.cancel(calls[1], 1.0) == []
    assert snapshot(s, calls) == before


def test_a_refused_dispatch_frees_the_worker_for_the_next_call() -> None:
    s = scheduler(PoolConfig(window=1))
    t1, t2 = tickets(2)
    submit(s, [t1, t2])
    s.prepared(ENV, 0.0)
    assert dispatched(s.hello(W1, 0.0)) == [(W1, 1)]
    actions = s.dispatch_refused(t1, 0.1)  # its future had been cancelled
    assert actions == [Dispatch(W1, t2)]
    assert t1.state is CallState.DONE
    assert slot(s, W1).running is t2


def test_a_refused_dispatch_of_the_last_call_leaves_the_worker_idle() -> None:
    s = scheduler()
    call = ticket(1)
    s.submit(call, 0.0)
    s.prepared(ENV, 0.0)
    s.hello(W1, 0.0)
    assert s.dispatch_refused(call, 0.5) == []
    assert (slot(s, W1).state, slot(s, W1).idle_since) == (WorkerState.IDLE, 0.5)


def test_a_refused_call_sent_ahead_is_dropped_from_the_window() -> None:
    calls = tickets(3)
    s = running_pool(PoolConfig(workers=1, window=3), calls)
    s.dispatch_refused(calls[1], 0.1)
    assert ids(slot(s, W1).ahead) == [3]


def test_a_call_promoted_by_a_refused_dispatch_keeps_its_timeout() -> None:
    t1 = ticket(1, timeout=5.0)
    t2 = ticket(2, timeout=5.0)
    s = running_pool(PoolConfig(workers=1, window=2), [t1, t2], now=1.0)
    s.dispatch_refused(t1, 1.0)  # the broker found t1's future cancelled; t2 is sent
    assert slot(s, W1).running is t2
    assert t2.deadline == 6.0
    assert s.tick(6.0) == [Kill(W1, KillReason.TIMEOUT)]


# --------------------------------------------------------------------------- never lose a call


class Driver:
    """Plays a broker, its workers and its calling threads against the scheduler, keeping the
    books: which calls were completed (by a Complete, a refused dispatch or a direct answer)."""

    def __init__(self, config: PoolConfig) -> None:
        self.s = scheduler(config, heartbeat_timeout=30.0)
        self.now = 0.0
        self.tickets: list[Ticket] = []
        self.completes: dict[int, int] = {}
        self.cancelled: set[int] = set()  # futures the caller cancelled
        self.sent: set[int] = set()  # calls sent to a worker (their futures run: no cancel)
        self.keepers: list[bytes] = []  # workers that kept an object (alive or not)
        self.known: list[bytes] = []
        self.ids = itertools.count(1)

    def done(self, call: Ticket) -> None:
        self.completes[call.call_id] = self.completes.get(call.call_id, 0) + 1
        assert self.completes[call.call_id] == 1, f"call {call.call_id} completed twice"
        assert call.state is CallState.DONE

    def take(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Complete):
                self.done(action.ticket)
            elif isinstance(action, Start):
                self.known.append(action.ident)
            elif isinstance(action, Dispatch):
                target = self.s.slots.get(action.ident)
                assert target is not None, f"dispatched to a forgotten worker {action.ident!r}"
                assert target.state is WorkerState.BUSY
                assert action.ticket.worker == action.ident
                if action.ticket.call_id in self.cancelled:  # as the broker does
                    self.take(self.s.dispatch_refused(action.ticket, self.now))
                    self.done(action.ticket)
                else:
                    self.sent.add(action.ticket.call_id)

    def pick(self, n: int) -> bytes:
        return self.known[n % len(self.known)] if self.known else b"nobody"

    def new_ticket(self, n: int) -> Ticket:
        call = ticket(next(self.ids), retries=n % 2, timeout=(None, 5.0)[n % 3 == 0])
        self.tickets.append(call)
        return call

    def step(self, op: str, n: int) -> None:
        s = self.s
        if s.stopping and op in ("submit", "direct"):
            pass  # the runner refuses calls once it shuts down
        elif op == "submit":
            call = self.new_ticket(n)
            if n % 7 == 0 and self.keepers:  # on an object a worker keeps (or kept)
                call.pin, call.pinned_what = self.keepers[n % len(self.keepers)], f"object {n}"
                call.retries = n % 2  # (pinned calls never run again elsewhere)
            self.take(s.submit(call, self.now))
            if s.pools[ENV].state is PoolState.PREPARING and n % 4:
                self.take(s.prepared(ENV, self.now))
        elif op == "prepared" and s.pools[ENV].state is PoolState.PREPARING:
            self.take(s.prepared(ENV, self.now))
        elif op == "hello":
            self.take(s.hello(self.pick(n), self.now))
        elif op == "result":
            ident = self.pick(n)
            running = s.slots[ident].running if ident in s.slots else None
            call_id = running.call_id if running is not None and n % 5 else n
            if n % 6 == 0 and running is not None and running.call_id == call_id:
                s.kept(ident, n)  # a result kept in the worker (the broker books it first)
                self.keepers.append(ident)
            self.take(s.result(ident, call_id, f"value of {call_id}", self.now))
        elif op == "exited":
            ident = self.pick(n)
            worker = s.slots.get(ident)
            held = [] if worker is None else ids([worker.running] if worker.running else [])
            held += [] if worker is None else ids(worker.ahead)
            choices = [0, n, *held]
            self.take(s.exited(ident, -9, choices[n % len(choices)], [], self.now))
        elif op == "start_failed":  # the broker reports it as it carries out a Start
            ident = self.pick(n)
            if ident in s.slots and s.slots[ident].state is WorkerState.STARTING:
                error = WorkerStartError(ENV, 0, "OSError")
                self.take(s.start_failed(ident, error, self.now))
        elif op == "kill":
            self.take(s.kill(self.pick(n), list(KillReason)[n % len(KillReason)]))
        elif op == "tick":
            self.now += n % 40
            self.take(s.tick(self.now))
        elif op == "heartbeat":
            s.heartbeat(self.pick(n), self.now)
        elif op == "release":
            ident = self.pick(n)
            s.released(ident, sorted(s.slots[ident].kept) if ident in s.slots else [])
        elif op == "cancel" and self.tickets:  # Future.cancel(), then a Cancel command
            call = self.tickets[n % len(self.tickets)]
            if call.state is not CallState.DONE and call.call_id not in self.sent:
                self.cancelled.add(call.call_id)
            if n % 2:  # else the broker has not read the command yet
                self.take(s.cancel(call, self.now))
        elif op == "direct":
            self.direct(n)
        elif op == "join":
            if s.joined(f"r{n}".encode(), ENV, n, self.now) is not None:
                self.known.append(f"r{n}".encode())
        elif op == "shutdown":
            self.take(s.shutdown(bool(n % 2), self.now))
        self.check()

    def direct(self, n: int) -> None:
        """A calling thread runs a call on an idle worker; it may die meanwhile."""
        s = self.s
        call = self.new_ticket(n)
        got = s.checkout(call, self.now)
        if got is None:
            self.take(s.submit(call, self.now))
            return
        self.sent.add(call.call_id)
        if n % 3 == 0:
            self.take(s.exited(got.ident, -9, 0, [], self.now))  # failed, or queued again
        else:
            later = s.answered_direct(got.ident, call, self.now)
            self.done(call)  # the calling thread completes it
            for action in later:
                if isinstance(action, Pump):
                    self.take(s.pump(action.env, self.now))
                else:
                    assert action == Shutdown(got.ident)
        self.take(s.let_go(got.ident))

    def drain(self) -> None:
        """Let everything finish: workers say hello, answer and leave when told, one joins a
        remote pool whose calls wait, and the clock moves to each next deadline."""
        s = self.s
        for _ in range(1000):
            if s.pools[ENV].state is PoolState.PREPARING:
                self.take(s.prepared(ENV, self.now))
            acted = False
            for ident, worker in list(s.slots.items()):
                if worker.state is WorkerState.STARTING:
                    self.take(s.hello(ident, self.now))
                elif worker.state is WorkerState.BUSY and worker.running is not None:
                    call_id = worker.running.call_id
                    self.take(s.result(ident, call_id, "late", self.now))
                elif worker.state is WorkerState.STOPPING:
                    self.take(s.exited(ident, 0, running_id(s, ident) or 0, [], self.now))
                else:
                    continue
                acted = True
                self.check()
            pool = s.pools[ENV]
            if not acted and pool.queue and not any(w.state.live for w in pool.workers):
                acted = (
                    s.joined(f"r{1000 + len(self.known)}".encode(), ENV, 1, self.now) is not None
                )
                self.known += [w.ident for w in pool.workers if w.ident not in self.known]
            deadline = s.next_deadline()
            if not acted and deadline is not None and not s.finished():
                self.now = max(self.now, deadline)
                self.take(s.tick(self.now))
                self.check()
                acted = True
            if not acted:
                return
        raise AssertionError("the scheduler never settles")

    def check(self) -> None:
        """Every call is completed once, or is in exactly one queue or worker."""
        s = self.s
        places: dict[int, list[str]] = {}
        for pool in s.pools.values():
            for call in pool.queue:
                places.setdefault(call.call_id, []).append("queue")
        for ident, worker in s.slots.items():
            if worker.running is not None:
                places.setdefault(worker.running.call_id, []).append(f"{ident!r} running")
            for call in worker.ahead:
                places.setdefault(call.call_id, []).append(f"{ident!r} ahead")
            for call in worker.pinned:
                places.setdefault(call.call_id, []).append(f"{ident!r} pinned")
            if worker.state is WorkerState.DEAD:
                assert worker.held
                assert worker.running is None
        for call in self.tickets:
            where = places.get(call.call_id, [])
            if call.call_id in self.completes:
                assert call.state is CallState.DONE
                assert where == [], f"{call} completed but still {where}"
            else:
                assert len(where) == 1, f"{call} is in {where or 'no place'}"
                waits = where[0] == "queue" or where[0].endswith("pinned")
                expected = CallState.QUEUED if waits else CallState.RUNNING
                assert call.state is expected, f"{call} is {where}"


OPS = [
    "submit",
    "prepared",
    "hello",
    "result",
    "exited",
    "start_failed",
    "kill",
    "tick",
    "heartbeat",
    "cancel",
    "direct",
    "join",
    "shutdown",
    "release",
]
configs = st.builds(
    PoolConfig,
    workers=st.integers(1, 3),
    window=st.integers(1, 4),
    max_calls=st.none() | st.integers(1, 3),
    idle_timeout=st.none() | st.just(15.0),
    local=st.booleans(),
)
events = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 1000)), max_size=80)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, plan=events)
def test_random_events_never_lose_or_repeat_a_call(
    config: PoolConfig, plan: list[tuple[str, int]]
) -> None:
    """Whatever happens, a call is completed at most once, and until then it is in exactly one
    place: a pool's queue, a worker's pinned calls, or a worker (running or sent ahead)."""
    driver = Driver(config)
    for op, n in plan:
        driver.step(op, n)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, plan=events)
def test_after_random_events_every_call_completes_once_workers_answer(
    config: PoolConfig, plan: list[tuple[str, int]]
) -> None:
    """And none waits forever: once workers say hello, answer and leave when told (and the
    clock moves on), every call is completed, and a runner that shuts down finishes."""
    driver = Driver(config)
    for op, n in plan:
        driver.step(op, n)
    driver.drain()
    pool = driver.s.pools[ENV]
    left = [t for t in driver.tickets if t.call_id not in driver.completes]
    assert left == [], f"never completed: {left}, pool {pool.state.value}"
    if driver.s.stopping and not left:
        assert driver.s.finished()
