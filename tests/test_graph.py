"""The scheduler's graph as a specification: calls that wait for their inputs, identical calls
merged, a failure that stops only its descendants, cancels.

As ``tests/test_scheduler.py``: events in (``submit``, ``input_done``, ``resolved``,
``result``, ``cancel``...), actions and states out; no process, socket, thread or clock. An
input's outcome comes in as the ``Failed`` record its future's callback makes (``_inputs.py``).
"""

from __future__ import annotations

from concurrent.futures import CancelledError
from typing import Any

import pytest
from test_scheduler import ENV, W1, completed, dispatched, idle_pool, ids, kinds, scheduler

from envrunner._actions import (
    CallState,
    Complete,
    Dispatch,
    Failed,
    PoolConfig,
    Prepare,
    Resolve,
    Ticket,
)
from envrunner._calls import SameAs
from envrunner._runtime.errors import DependencyError, EnvrunnerError
from envrunner._scheduler import Scheduler

OTHER = "other"


def waiting(call_id: int, inputs: int, env: str = ENV, **fields: Any) -> Ticket:
    """A call given ``inputs`` futures (none done yet)."""
    return Ticket(call_id, env, f"task{call_id}", deferred=True, inputs_left=inputs, **fields)


def failed(name: str = "prep()", words: str = "ValueError: bad row") -> Failed:
    return Failed(f"{name} in environment 'data'", words)


def state(call: Ticket) -> CallState:
    return call.state


def resolves(actions: list[Any]) -> list[int]:
    return [a.ticket.call_id for a in actions if isinstance(a, Resolve)]


# --------------------------------------------------------------------------- waiting


def test_a_call_given_futures_waits_and_dispatches_nothing() -> None:
    s = idle_pool(PoolConfig())
    call = waiting(1, inputs=2)
    assert s.submit(call, 0.0) == []
    assert call.state is CallState.WAITING
    assert s.waiting == {1: call}
    assert not s.pools[ENV].queue


def test_it_is_resolved_when_its_last_input_is_done_and_then_dispatched() -> None:
    s = idle_pool(PoolConfig())
    call = waiting(1, inputs=2)
    s.submit(call, 0.0)
    assert s.input_done(call, None, 0.1) == []
    assert call.state is CallState.WAITING
    assert resolves(s.input_done(call, None, 0.2)) == [1]
    assert state(call) is CallState.RESOLVING
    actions = s.resolved(call, 0.3)
    assert dispatched(actions) == [(W1, 1)]
    assert state(call) is CallState.RUNNING and not call.deferred
    assert s.waiting == {}


def test_its_environment_is_built_while_it_waits_but_no_worker_starts() -> None:
    s = scheduler()
    call = waiting(1, inputs=1)
    assert s.submit(call, 0.0) == [Prepare(ENV)]
    assert s.prepared(ENV, 0.1) == []  # nothing to run yet: no worker
    s.input_done(call, None, 0.2)
    assert kinds(s.resolved(call, 0.3)) == ["Start"]


def test_inputs_done_before_the_call_is_submitted_count_too() -> None:
    """A future done already calls back at once, before the call's own submit arrives."""
    s = idle_pool(PoolConfig())
    call = waiting(1, inputs=1)
    assert s.input_done(call, None, 0.0) == []  # (not submitted yet: nothing to do)
    assert resolves(s.submit(call, 0.1)) == [1]


def test_a_resolved_call_pinned_to_a_worker_goes_to_that_worker() -> None:
    s = idle_pool(PoolConfig(workers=2), workers=2)
    call = waiting(1, inputs=1)
    s.submit(call, 0.0)
    s.input_done(call, None, 0.0)
    call.pin = b"w2"  # its input was a Ref kept by w2 (set by the inputs thread)
    assert dispatched(s.resolved(call, 0.1)) == [(b"w2", 1)]


def test_a_value_that_cannot_be_put_in_fails_only_that_call() -> None:
    s = idle_pool(PoolConfig())
    call, other = waiting(1, inputs=1), waiting(2, inputs=1)
    s.submit(call, 0.0)
    s.submit(other, 0.0)
    s.input_done(call, None, 0.0)
    error = EnvrunnerError("cannot load the result of prep()")
    assert completed(s.resolve_failed(call, error, 0.1)) == {1: error}
    assert s.waiting == {2: other}


# --------------------------------------------------------------------------- failures


def test_a_failed_input_fails_the_call_with_a_dependency_error_naming_it() -> None:
    s = idle_pool(PoolConfig())
    call = waiting(1, inputs=2)
    s.submit(call, 0.0)
    done = completed(s.input_done(call, failed(), 0.1))
    error = done[1]
    assert isinstance(error, DependencyError)
    assert error.ancestor == "prep() in environment 'data'"
    assert error.error == "ValueError: bad row"
    assert "task1 in environment 'e' did not run" in str(error)
    assert "prep() in environment 'data' failed with ValueError: bad row" in str(error)
    assert s.waiting == {}
    assert s.input_done(call, None, 0.2) == []  # its other input, later: nothing more


def test_a_failure_stops_only_its_descendants() -> None:
    """a fails: b (given a) fails, c (given b) fails naming a, d (given nothing of a) runs."""
    s = idle_pool(PoolConfig())
    b, c, d = waiting(2, inputs=1), waiting(3, inputs=1), waiting(4, inputs=1)
    for call in (b, c, d):
        s.submit(call, 0.0)
    error_b = completed(s.input_done(b, failed("a()"), 0.1))[2]
    # c's input (b's future) failed with that DependencyError: its callback says so, via b
    via_b = Failed(error_b.ancestor, error_b.error, None, via=error_b.task)
    error_c = completed(s.input_done(c, via_b, 0.2))[3]
    assert isinstance(error_c, DependencyError)
    assert error_c.ancestor == "a() in environment 'data'" and error_c.via == "task2"
    assert "(through task2)" in str(error_c)
    assert resolves(s.input_done(d, None, 0.3)) == [4]
    assert dispatched(s.resolved(d, 0.4)) == [(W1, 4)]


def test_a_cancelled_input_cancels_the_call() -> None:
    s = idle_pool(PoolConfig())
    call = waiting(1, inputs=1)
    s.submit(call, 0.0)
    actions = s.input_done(call, Failed("a()", "cancelled", cancelled=True), 0.1)
    (complete,) = [a for a in actions if isinstance(a, Complete)]
    assert complete.cancelled and isinstance(complete.outcome, CancelledError)


# --------------------------------------------------------------------------- cancel


@pytest.mark.parametrize("state", ["waiting", "resolving"])
def test_cancelling_a_waiting_call_withdraws_it(state: str) -> None:
    s = idle_pool(PoolConfig())
    call = waiting(1, inputs=1)
    s.submit(call, 0.0)
    if state == "resolving":
        s.input_done(call, None, 0.0)
    actions = s.cancel(call, 0.1)
    assert [(a.ticket.call_id, a.cancelled) for a in actions if isinstance(a, Complete)] == [
        (1, True)
    ]
    assert s.waiting == {}
    if state == "resolving":  # the inputs thread reports later: its blocks are freed, no run
        late = s.resolved(call, 0.2)
        assert kinds(late) == ["Complete"] and not dispatched(late)


# --------------------------------------------------------------------------- merged calls


def keyed(call_id: int, key: bytes = b"k", **fields: Any) -> Ticket:
    return Ticket(call_id, ENV, f"task{call_id}", merge_key=key, **fields)


def test_an_identical_pending_call_runs_once_and_both_get_its_answer() -> None:
    s = idle_pool(PoolConfig())
    first, second = keyed(1), keyed(2)
    assert dispatched(s.submit(first, 0.0)) == [(W1, 1)]
    assert s.submit(second, 0.0) == []
    assert second.state is CallState.MERGED and first.followers == [second]
    done = completed(s.result(W1, 1, "answer", 0.1))
    assert done[1] == "answer"
    assert isinstance(done[2], SameAs) and done[2].ticket is first
    assert s.leaders == {}


def test_merged_calls_share_an_error() -> None:
    s = idle_pool(PoolConfig())
    first, second = keyed(1), keyed(2)
    s.submit(first, 0.0)
    s.submit(second, 0.0)
    error = EnvrunnerError("boom")
    assert completed(s.result(W1, 1, error, 0.1)) == {1: error, 2: error}


def test_different_keys_or_none_do_not_merge() -> None:
    s = scheduler()
    s.submit(keyed(1, b"a"), 0.0)
    s.submit(keyed(2, b"b"), 0.0)
    s.submit(Ticket(3, ENV, "t"), 0.0)
    s.submit(Ticket(4, ENV, "t"), 0.0)
    assert ids(s.pools[ENV].queue) == [1, 2, 3, 4]


def test_a_call_after_the_first_is_done_runs_again() -> None:
    s = idle_pool(PoolConfig())
    s.submit(keyed(1), 0.0)
    s.result(W1, 1, "answer", 0.1)
    assert dispatched(s.submit(keyed(2), 0.2)) == [(W1, 2)]


def test_cancelling_the_leader_hands_its_place_to_a_follower() -> None:
    s = scheduler()  # no worker yet: both wait in the queue
    first, second, third = keyed(1), keyed(2), keyed(3)
    for call in (first, second, third):
        s.submit(call, 0.0)
    assert ids(s.pools[ENV].queue) == [1]
    actions = s.cancel(first, 0.1)
    assert [(a.ticket.call_id, a.cancelled) for a in actions if isinstance(a, Complete)] == [
        (1, True)
    ]
    assert ids(s.pools[ENV].queue) == [2]
    assert second.followers == [third] and third.leader is second
    assert s.leaders == {b"k": second}


def test_cancelling_a_follower_leaves_the_leader() -> None:
    s = scheduler()
    first, second = keyed(1), keyed(2)
    s.submit(first, 0.0)
    s.submit(second, 0.0)
    s.cancel(second, 0.1)
    assert not first.followers and ids(s.pools[ENV].queue) == [1]


def test_waiting_calls_merge_and_resolve_once() -> None:
    s = idle_pool(PoolConfig())
    first, second = waiting(1, 1, merge_key=b"k"), waiting(2, 1, merge_key=b"k")
    s.submit(first, 0.0)
    s.submit(second, 0.0)
    assert resolves(s.input_done(first, None, 0.1)) == [1]
    assert s.input_done(second, None, 0.1) == []  # a follower: its leader resolves
    assert dispatched(s.resolved(first, 0.2)) == [(W1, 1)]
    assert set(completed(s.result(W1, 1, "v", 0.3))) == {1, 2}


def test_a_direct_call_identical_to_a_pending_one_goes_through_the_broker() -> None:
    s = idle_pool(PoolConfig(workers=2), workers=2)
    s.submit(keyed(1), 0.0)
    assert s.checkout(keyed(2), 0.1) is None
    assert s.checkout(Ticket(3, ENV, "t"), 0.1) is not None


def test_a_waiting_call_never_takes_the_direct_path() -> None:
    s = idle_pool(PoolConfig())
    assert s.checkout(waiting(1, 1), 0.0) is None


# --------------------------------------------------------------------------- the end


def test_shutdown_waits_for_waiting_calls_and_keeps_their_workers() -> None:
    s = idle_pool(PoolConfig())
    call = waiting(1, inputs=1)
    s.submit(call, 0.0)
    assert "Shutdown" not in kinds(s.shutdown(False, 0.1))
    assert not s.finished()
    s.input_done(call, None, 0.2)
    assert dispatched(s.resolved(call, 0.3)) == [(W1, 1)]
    assert "Shutdown" in kinds(s.result(W1, 1, "v", 0.4))


def test_shutdown_with_cancel_cancels_waiting_calls() -> None:
    s = idle_pool(PoolConfig())
    call = waiting(1, inputs=1)
    s.submit(call, 0.0)
    actions = s.shutdown(True, 0.1)
    assert [(a.ticket.call_id, a.cancelled) for a in actions if isinstance(a, Complete)] == [
        (1, True)
    ]
    assert s.waiting == {}


def test_fail_everything_fails_waiting_calls() -> None:
    s: Scheduler = idle_pool(PoolConfig())
    s.submit(waiting(1, inputs=1), 0.0)
    error = EnvrunnerError("broker died")
    assert completed(s.fail_everything(error)) == {1: error}


def test_other_pools_are_untouched_by_a_failure_elsewhere() -> None:
    s = Scheduler({ENV: PoolConfig(), OTHER: PoolConfig()}, start_timeout=10.0)
    call = waiting(1, inputs=1, env=OTHER)
    s.submit(call, 0.0)
    s.submit(Ticket(2, ENV, "t"), 0.0)
    completed(s.input_done(call, failed(), 0.1))
    assert ids(s.pools[ENV].queue) == [2]
    assert not any(isinstance(a, Dispatch) for a in s.cancel(call, 0.2))
