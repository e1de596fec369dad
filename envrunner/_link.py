"""What a runner's futures and refs may ask of it, without keeping it alive.

A future or a ``Ref`` outlives the statement that made it; it must not keep its runner (and
the runner's workers) alive. :class:`RunnerLink` holds the runner weakly and gives futures and
refs the few things they need (``_futures.Link``): the shared-memory mapper, Ctrl-C, withdrawing
a queued call, releasing an object a worker keeps, fetching a kept value.

May import: the standard library, ``envrunner._actions``, ``_broker``, ``_futures``,
``_runtime``.
"""

from __future__ import annotations

import weakref
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

from ._runtime.errors import RunnerClosedError

if TYPE_CHECKING:
    from ._actions import Ticket
    from ._broker import Broker
    from ._futures import Ref
    from ._runtime.shm import Mapper

__all__ = ["Owner", "RunnerLink"]


class Owner(Protocol):
    """What the link needs of its runner."""

    _mapper: Mapper
    _broker: Broker | None
    _closed: bool

    def _interrupt(self) -> None: ...
    def _ensure_broker(self) -> Broker: ...
    def submit(self, env: str, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]: ...


class RunnerLink:
    """What a runner's futures and refs may ask of it (``_futures.Link``), holding it weakly."""

    def __init__(self, runner: Owner) -> None:
        self._runner = weakref.ref(runner)

    @property
    def mapper(self) -> Mapper | None:
        runner = self._runner()
        return runner._mapper if runner is not None else None

    def interrupt(self) -> None:
        runner = self._runner()
        if runner is not None:
            runner._interrupt()

    def withdraw(self, ticket: Ticket) -> None:
        from ._actions import CallState  # a future was cancelled: its call leaves the queue

        runner = self._runner()
        broker = runner._broker if runner is not None else None
        waits = (CallState.QUEUED, CallState.WAITING, CallState.RESOLVING, CallState.MERGED)
        if broker is not None and ticket.state in waits:
            broker.cancel(ticket)

    def input_done(self, ticket: Ticket, failed: Any) -> None:
        """A future among a call's arguments is done: the scheduler hears it (also while the
        runner shuts down: it waits for its waiting calls)."""
        runner = self._runner()
        if runner is None:
            return
        broker = runner._broker
        if broker is None:
            try:
                broker = runner._ensure_broker()
            except RunnerClosedError:
                return  # (nothing waits there any more)
        broker.input_done(ticket, failed)

    def release_ref(self, worker: bytes, ident: int) -> None:
        runner = self._runner()
        broker = runner._broker if runner is not None else None
        if broker is not None and runner is not None and not runner._closed:
            broker.release(worker, [], [ident])

    def fetch(self, ref: Ref) -> Future[Any]:
        from ._runtime import value_of

        runner = self._runner()
        if runner is None:
            raise RunnerClosedError(
                f"the runner that kept {ref!r} is gone, and its worker with it: keep the "
                "runner open while you use its references (or fetch() the value first)"
            )
        return runner.submit(ref.env, value_of, ref)
