"""The direct path: a thread making a synchronous call runs it on a worker it checked out.

::

    calling thread                                        worker
    ──────────────                                        ──────
    checkout(env) ── under the broker's lock: an idle worker, now "direct"
    CALL on the worker's own channel ────────────────────► runs it
    wait on that channel and the worker's pidfd ◄───────── RESULT
    give it back (idle again), book blocks and kept objects, make sure its output came first

No broker thread is woken on the way: the call crosses two processes, not four thread hops.
The broker still supervises the worker: if it dies, or runs out of time (the calling thread
kills it), the broker reaps it and fails the call with the error that says why, and the calling
thread returns that. While a thread holds a worker, only that thread uses its channel; the
broker closes it only after the thread let go.

May import: the standard library, zmq, ``envrunner._calls``, ``_workers``, ``_runtime``.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from ._calls import PendingCall, RawResult, remote_error
from ._runtime import wire
from ._runtime.protocol import Result, Shutdown, pack, unpack
from ._workers import DirectChannel, WorkerHandle

if TYPE_CHECKING:
    from ._broker import Broker

__all__ = ["DirectCalls"]


class DirectCalls:
    """The broker's methods that calling threads run themselves (mixed into ``Broker``)."""

    def checkout(self: Broker, env: str, pin: bytes | None) -> WorkerHandle | None:
        """An idle worker for the calling thread to run a synchronous call on, or None.

        None when the pool is not ready, has calls queued (they go first), or has no idle
        worker (or not the one ``pin`` names): the call then goes through the broker.
        """
        with self._lock:
            pool = self._pools[env]
            if self._stopping or pool.state != "ready" or pool.queue:
                return None
            if pin is not None:
                pinned = self._workers.get(pin)
                candidates = [pinned] if pinned is not None and not pinned.pinned else []
            else:
                candidates = pool.workers
            for worker in candidates:
                if worker.state == "idle" and worker.direct is not None:
                    worker.state = "direct"
                    worker.in_direct_call = True
                    return worker
        return None

    def run_direct(self: Broker, worker: WorkerHandle, call: PendingCall) -> RawResult:
        """Run a call on a checked-out worker, in the calling thread; give the worker back.

        Raises:
            Whatever the call raised (rebuilt), ``TaskTimeoutError``, ``WorkerCrashed``.
        """
        direct = worker.direct
        assert direct is not None
        with self._lock:
            worker.call = call
            call.worker = worker
            worker.lent.update((name, offset) for name, offset in call.blocks)
        call.future.set_running_or_notify_cancel()
        deadline = None if call.timeout is None else time.monotonic() + call.timeout
        message = call.message()
        try:
            wire.send(direct.socket, pack(message, direct.signer, direct.outgoing))
            result = self._wait_direct(worker, direct, call, deadline)
        except KeyboardInterrupt:
            self._kill_from_outside(worker, "interrupted")
            self._end_direct(worker)
            raise
        if result is None:  # it died or ran out of time: the broker's report says which
            self._end_direct(worker)
            value: RawResult = call.future.result()
            return value
        return self._give_back(worker, call, result)

    def _end_direct(self: Broker, worker: WorkerHandle) -> None:
        """The calling thread is done with the worker's channel (close it if the worker died)."""
        with self._lock:
            worker.in_direct_call = False
            if worker.state == "dead":
                self._close_worker(worker)

    def _wait_direct(
        self: Broker,
        worker: WorkerHandle,
        direct: DirectChannel,
        call: PendingCall,
        deadline: float | None,
    ) -> Result | None:
        watching_exit = worker.process.pidfd >= 0
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not watching_exit:
                wait = 0.1 if wait is None else min(wait, 0.1)
            events = dict(direct.poller.poll(None if wait is None else int(wait * 1000)))
            if direct.socket in events:
                message = unpack(direct.incoming, wire.receive(direct.socket), direct.verifier)
                if isinstance(message, Result) and message.call_id == call.call_id:
                    return message
                continue
            if events or worker.process.poll() is not None or worker.state == "dead":
                return None  # the worker exited: the broker reaps it and fails the call
            if deadline is not None and time.monotonic() >= deadline:
                self._kill_from_outside(worker, "timeout")
                return None

    def _give_back(
        self: Broker, worker: WorkerHandle, call: PendingCall, result: Result
    ) -> RawResult:
        """Book a direct call's answer and return the worker to its pool (calling thread)."""
        wake = False
        with self._lock:
            call.finished = True
            self._book_result(worker, result)
            if worker.state == "direct":
                pool = self._pools[worker.env]
                worker.call = None
                if self._recycle(pool, worker):
                    worker.state = "stopping"
                    assert worker.direct is not None
                    direct = worker.direct
                    wire.send(direct.socket, pack(Shutdown(), direct.signer, direct.outgoing))
                else:
                    worker.state = "idle"
                    worker.idle_since = time.monotonic()
                wake = bool(pool.queue or worker.pinned or self._stopping)
            worker.in_direct_call = False
            if worker.state == "dead":  # it died right after answering
                self._close_worker(worker)
        if wake:
            self._command("pump", worker.env)
        if worker.pending_output():
            drained = threading.Event()
            self._command("drain", worker, drained)
            drained.wait(5.0)
        if not result.ok:
            raise remote_error(call, result.payload)
        if result.segments and self._mapper is not None:
            self._mapper.attach(result.segments)
        return RawResult(
            result.payload, list(result.buffers), worker.identity, worker.pid, result.kept
        )

    def _kill_from_outside(self: Broker, worker: WorkerHandle, reason: str) -> None:
        with self._lock:
            if worker.state != "dead":
                self._kill(worker, reason)
