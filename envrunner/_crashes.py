"""A dead worker's calls: which one it was running, which answers died with it, and the error
each fails with.

::

    worker held:   running ─ ahead[0] ─ ahead[1] ─ ahead[2]      (in the order it runs them)
    its record:               ▲ started (the id it wrote as it began that call)
    outcome:       answer lost │ was running │ never started ─► back to the front of the queue

The scheduler (``_scheduler.py``) decides what to do with them (retry, fail); these functions
only sort and name, with no I/O.

May import: the standard library, ``envrunner._actions``, ``_runtime.errors``.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from concurrent.futures import CancelledError

from ._actions import CallState, KillReason, Slot, Ticket
from ._runtime.errors import TaskTimeoutError, WorkerCrashed

__all__ = ["death_error", "sort_out_calls"]


def sort_out_calls(
    slot: Slot, queue: collections.deque[Ticket], started: int
) -> tuple[Ticket | None, list[Ticket]]:
    """A dead worker's calls: the one it was running, those it finished but whose answers
    died with it, and (back to the front of ``queue``) those it never started.

    It held its running call and the calls sent ahead, in the order it runs them; the id
    it recorded as it began each one (``started``) says how far it got. A record naming an
    earlier call (already answered) means it began none of these; without a record (0), or one
    naming none of them, the first is the one that was running.
    """
    given = ([slot.running] if slot.running is not None else []) + list(slot.ahead)
    slot.running = None
    slot.ahead.clear()
    if not given:
        return None, []
    ids = [ticket.call_id for ticket in given]
    # A record naming an earlier (answered) call: it began none of these.
    began_none = 0 < started < ids[0]
    running = -1 if began_none else (ids.index(started) if started in ids else 0)
    for waiting in reversed(given[running + 1 :]):  # never started: run them elsewhere
        waiting.state = CallState.QUEUED
        waiting.worker = None
        waiting.deadline = None
        queue.appendleft(waiting)  # (only unpinned calls are ever sent ahead)
    if running < 0:
        return None, []
    return given[running], given[:running]


def death_error(
    slot: Slot,
    ticket: Ticket,
    returncode: int | None,
    tail: Sequence[str],
    heartbeat_timeout: float | None,
    answer_lost: bool = False,
    why: str = "",
) -> BaseException:
    """The error of a call whose worker died: why (its signal, a kill and its reason, or
    ``why``: what ran it says, such as a Slurm job's end state), and the worker's last stderr
    lines."""
    if answer_lost:
        reason = (
            "it had finished, but the worker died before its answer left the process "
            "(while running the call after it); its effects happened, its value is lost: "
            "run it again if that is safe"
        )
        return WorkerCrashed(slot.env, slot.pid, returncode, list(tail), ticket.name, reason)
    if slot.killed_for is KillReason.TIMEOUT:
        return TaskTimeoutError(ticket.env, ticket.name, ticket.timeout or 0, slot.pid)
    if slot.killed_for is KillReason.INTERRUPTED:
        return CancelledError("interrupted (Ctrl-C): the worker was stopped")
    reason = why
    if slot.killed_for is KillReason.HEARTBEAT:
        reason = (
            f"it stopped answering heartbeats for {heartbeat_timeout or 0:g}s (stuck in "
            "native code that holds the GIL, or stopped), so envrunner killed it"
        )
    return WorkerCrashed(slot.env, slot.pid, returncode, list(tail), ticket.name, reason)
