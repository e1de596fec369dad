"""The scheduler's graph: calls that wait for other calls, and identical calls merged.

::

    submit(ticket given futures)  ─► WAITING (inputs_left: futures not done yet)
    input_done(ticket, error)     ─► one fewer; a failed input: DONE with a DependencyError
                                     (a cancelled one: cancelled); the last one ─► RESOLVING
                                     and a Resolve action (the caller puts the values in)
    resolved(ticket)              ─► QUEUED, as any submitted call (pinned, if a value is a Ref)
    resolve_failed(ticket, error) ─► DONE with the error (a value that could not be loaded
                                     or sent on)

    submit(ticket with merge_key) ─► an identical call pending (same key, not DONE)?
                                     MERGED: its follower, DONE when it is, with its outcome
                                     (a SameAs: the leader's future's value), else the leader

A failure reaches only the calls that depend on it: a failed (or cancelled) call's future tells
each call given it (``input_done``), which fails (or is cancelled) in turn, and so on down; the
others run to the end. The futures tell through their done-callbacks (``_inputs.py``), so a
future of any kind (another runner's, a thread pool's) is an input too.

Cancelling a leader hands its place to its first follower (which has its own encoded call), so
the merged calls still run once; cancelling a follower leaves the leader alone.

Same rules as ``_placement.py``: no sockets, processes, threads or clocks; every move appends
the actions it needs to ``_out``.

May import: the standard library, ``envrunner._actions``, ``_calls``, ``_placement``,
``_runtime.errors``.
"""

from __future__ import annotations

from concurrent.futures import CancelledError
from typing import Any

from ._actions import Action, CallState, Complete, Failed, PoolState, Prepare, Resolve, Ticket
from ._calls import SameAs
from ._placement import Placement
from ._runtime.errors import DependencyError

__all__ = ["Graph"]


class Graph(Placement):
    """Pools' state (``Placement``) and the calls that wait or are merged (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Calls waiting for their inputs, or being resolved, by call id.
        self.waiting: dict[int, Ticket] = {}
        #: The pending call of each merge key (the one that runs; others follow it).
        self.leaders: dict[bytes, Ticket] = {}

    # ------------------------------------------------------------------ events

    def input_done(self, ticket: Ticket, failed: Failed | None, now: float) -> list[Action]:
        """One of the futures among a call's arguments is done (``failed``: it failed, or was
        cancelled). May come before the call's own ``submit``."""
        ticket.inputs_left -= 1
        if failed is not None and ticket.input_error is None:
            ticket.input_error = failed
        if ticket.state is CallState.WAITING:
            self._inputs_changed(ticket)
        return self._emit()

    def resolved(self, ticket: Ticket, now: float) -> list[Action]:
        """The caller put the values in a call's arguments: it queues as any other call."""
        if ticket.state is not CallState.RESOLVING:  # cancelled meanwhile: free its blocks
            return [Complete(ticket, CancelledError(), True)]
        del self.waiting[ticket.call_id]
        ticket.deferred = False
        ticket.state = CallState.QUEUED
        self._queue(ticket, now)
        self._let_go(now)
        return self._emit()

    def resolve_failed(self, ticket: Ticket, error: BaseException, now: float) -> list[Action]:
        """The values could not be put in (one cannot be loaded here, or sent on)."""
        if ticket.state is CallState.RESOLVING:
            self._complete(ticket, error)
        self._let_go(now)
        return self._emit()

    # ------------------------------------------------------------------ moves

    def _merge(self, ticket: Ticket) -> bool:
        """Make ``ticket`` follow an identical pending call; False if there is none (it
        leads from now on)."""
        key = ticket.merge_key
        if key is None:
            return False
        leader = self.leaders.get(key)
        if leader is None or leader.state is CallState.DONE:
            self.leaders[key] = ticket
            return False
        ticket.state = CallState.MERGED
        ticket.leader = leader
        if leader.followers is None:
            leader.followers = []
        leader.followers.append(ticket)
        return True

    def _wait(self, ticket: Ticket) -> None:
        ticket.state = CallState.WAITING
        self.waiting[ticket.call_id] = ticket
        pool = self.pools[ticket.env]
        if pool.state is PoolState.NEW and pool.config.local:  # built while its inputs run
            pool.state = PoolState.PREPARING
            self._out.append(Prepare(pool.env))
        self._inputs_changed(ticket)

    def _inputs_changed(self, ticket: Ticket) -> None:
        failed = ticket.input_error
        if failed is not None:
            if failed.cancelled:
                self._complete(
                    ticket, CancelledError(f"its input {failed.ancestor} was cancelled"), True
                )
            else:
                error = DependencyError(
                    ticket.name, ticket.env, failed.ancestor, failed.words, failed.via
                )
                error.failed = failed.future
                self._complete(ticket, error)
        elif ticket.inputs_left <= 0:
            ticket.state = CallState.RESOLVING
            self._out.append(Resolve(ticket))

    def _withdraw(self, ticket: Ticket) -> bool:
        """Take back a call nobody runs yet (its future was cancelled); True if it was."""
        state = ticket.state
        if state is CallState.MERGED:
            leader = ticket.leader
            if leader is not None and leader.followers and ticket in leader.followers:
                leader.followers.remove(ticket)
            self._complete(ticket, CancelledError(), True)
            return True
        if state in (CallState.WAITING, CallState.RESOLVING):
            follower = self._promote(ticket)
            del self.waiting[ticket.call_id]
            if follower is not None:
                follower.state = CallState.WAITING if follower.deferred else CallState.QUEUED
                if follower.deferred:
                    self.waiting[follower.call_id] = follower
                    self._inputs_changed(follower)
            self._complete(ticket, CancelledError(), True)
            return True
        return False

    def _promote(self, ticket: Ticket) -> Ticket | None:
        """A leader leaves before it ran: its first follower leads the others instead."""
        key = ticket.merge_key
        if key is not None and self.leaders.get(key) is ticket:
            del self.leaders[key]
        if not ticket.followers:
            return None
        follower, *rest = ticket.followers
        ticket.followers = None
        follower.leader = None
        follower.followers = rest
        for other in rest:
            other.leader = follower
        if key is not None:
            self.leaders[key] = follower
        return follower

    def _let_go(self, now: float) -> None:
        if not self.waiting:  # calls still wait for inputs: they will need their workers
            super()._let_go(now)

    def _complete(self, ticket: Ticket, outcome: Any, cancelled: bool = False) -> None:
        if ticket.state is CallState.DONE:
            return
        super()._complete(ticket, outcome, cancelled)
        key = ticket.merge_key
        if key is not None and self.leaders.get(key) is ticket:
            del self.leaders[key]
        self.waiting.pop(ticket.call_id, None)
        followers, ticket.followers = ticket.followers, None
        if followers:
            same = outcome if isinstance(outcome, BaseException) else SameAs(ticket)
            for follower in followers:
                self._complete(follower, same, cancelled)
