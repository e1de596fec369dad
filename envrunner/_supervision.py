"""Supervision: worker processes' output, exits, deadlines and heartbeats.

The broker thread runs these. A worker's exit (its pidfd becomes readable, or, without pidfds,
a poll) is reaped: its output is drained, the call it ran fails with the error that says why
(a crash with its signal and last stderr lines, a timeout, a hang, an interrupt) or runs again
if it asked for retries, what it held is taken back, and its pool starts a new worker for what
is queued. Timers kill calls past their deadline, workers that stopped sending heartbeats or
never said hello, and let idle workers go.

May import: the standard library, ``envrunner._calls``, ``_workers``, ``_runtime``.
"""

from __future__ import annotations

import logging
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING

from ._calls import SHUTDOWN_GRACE, START_FAILURE_LIMIT, PendingCall
from ._runtime.errors import (
    ReferenceLostError,
    TaskTimeoutError,
    WorkerCrashed,
    WorkerStartError,
    describe_exit,
)
from ._runtime.protocol import scope
from ._runtime.shm import unlink_owned
from ._workers import WorkerHandle

if TYPE_CHECKING:
    from ._broker import Broker, Pool

__all__ = ["Supervision"]

log = logging.getLogger("envrunner.broker")


class Supervision:
    """The broker's methods about processes and time (mixed into ``Broker``)."""

    def _fd_ready(self: Broker, fd: int) -> None:
        entry = self._fds.get(fd)
        if entry is None:
            return
        worker, kind = entry
        if kind == "exit":
            self._reap(worker)
        elif not worker.read(kind):
            self._close_stream(worker, kind)

    def _close_stream(self: Broker, worker: WorkerHandle, kind: str) -> None:
        if kind == "out":
            worker.out_open = False
        else:
            worker.err_open = False
        fd = worker.fd(kind)
        if fd in self._fds:
            del self._fds[fd]
            self._poller.unregister(fd)

    def _drain_output(self: Broker, worker: WorkerHandle) -> None:
        """Forward what the worker wrote before its result, so output precedes the result."""
        for kind, open_ in (("out", worker.out_open), ("err", worker.err_open)):
            if open_ and not worker.read(kind):
                self._close_stream(worker, kind)

    def _reap(self: Broker, worker: WorkerHandle) -> None:
        if worker.state == "dead":
            return
        returncode = worker.process.poll()
        if returncode is None:
            return
        if worker.ahead and not worker.remote:
            self._drain_router(self._router)  # answers it sent before it died settle first
        self._drain_output(worker)
        for kind in ("out", "err"):
            self._close_stream(worker, kind)
        pidfd = worker.process.pidfd
        if pidfd in self._fds:
            del self._fds[pidfd]
            self._poller.unregister(pidfd)
        previous = worker.state
        worker.state = "dead"
        if not worker.in_direct_call:  # else the calling thread closes it when it is done
            self._close_worker(worker)
        self._verifier.forget(scope("from", worker.identity))
        self._verifier.forget(scope("from", worker.identity + b".hb"))
        self._workers.pop(worker.identity, None)
        pool = self._pools[worker.env]
        if worker in pool.workers:
            pool.workers.remove(worker)
        log.debug("%r exited: %s", worker, returncode)
        call, lost = self._sort_out_calls(worker, pool)
        if call is not None and not call.finished and self._retry(call, worker, pool):
            call = None
        self._forget_memory(worker, returncode)
        for done in lost:
            self._fail(done, self._death_error(worker, done, returncode, answer_lost=True))
        if call is not None:
            self._fail(call, self._death_error(worker, call, returncode))
        elif previous == "starting" and not worker.killed_for:
            pool.start_failures += 1
            error = WorkerStartError(
                worker.env,
                worker.pid,
                f"it exited before saying hello ({describe_exit(returncode)})",
                worker.tail,
                returncode,
            )
            self._after_start_failure(pool, error)
        elif previous in ("idle", "busy") and not self._stopping and not worker.killed_for:
            log.warning(
                "worker for environment %r (pid %d) exited while idle: %s",
                worker.env,
                worker.pid,
                describe_exit(returncode),
            )
        self._pump(pool)
        self._stop_idle_workers()

    def _sort_out_calls(
        self: Broker, worker: WorkerHandle, pool: Pool
    ) -> tuple[PendingCall | None, list[PendingCall]]:
        """A dead worker's calls: the one it was running, those it finished but whose answers
        died with it, and (back to the front of the queue) those it never started.

        It held its running call and the calls sent ahead, in the order it runs them; the id
        it wrote to its ``--started`` file as it began each one says how far it got. Without
        that record (or if it names none of them), the first is the one that was running.
        """
        given = ([worker.call] if worker.call is not None else []) + list(worker.ahead)
        worker.call = None
        worker.ahead.clear()
        if not given:
            return None, []
        started = worker.started_call()
        ids = [call.call_id for call in given]
        running = ids.index(started) if started in ids else 0
        for waiting in reversed(given[running + 1 :]):  # never started: run them elsewhere
            waiting.worker = None
            waiting.deadline = None
            for name, offset in waiting.blocks:
                worker.lent.discard((name, offset))
            pool.queue.appendleft(waiting)  # (only unpinned calls are ever sent ahead)
        return given[running], given[:running]

    def _close_worker(self: Broker, worker: WorkerHandle) -> None:
        if worker.direct is not None:
            self._rejected_by_gone += worker.direct.verifier.rejected
            worker.direct.close()
        worker.process.close()

    def _death_error(
        self: Broker,
        worker: WorkerHandle,
        call: PendingCall,
        returncode: int | None,
        answer_lost: bool = False,
    ) -> BaseException:
        if answer_lost:
            reason = (
                "it had finished, but the worker died before its answer left the process "
                "(while running the call after it); its effects happened, its value is lost: "
                "run it again if that is safe"
            )
            return WorkerCrashed(worker.env, worker.pid, returncode, worker.tail, call.name, reason)
        if worker.killed_for == "timeout":
            return TaskTimeoutError(call.env, call.name, call.timeout or 0, worker.pid)
        if worker.killed_for == "interrupted":
            return CancelledError("interrupted (Ctrl-C): the worker was stopped")
        reason = ""
        if worker.killed_for == "heartbeat":
            reason = (
                f"it stopped answering heartbeats for {self._heartbeat_timeout:g}s (stuck in "
                "native code that holds the GIL, or stopped), so envrunner killed it"
            )
        return WorkerCrashed(worker.env, worker.pid, returncode, worker.tail, call.name, reason)

    def _retry(self: Broker, call: PendingCall, worker: WorkerHandle, pool: Pool) -> bool:
        """Run a crashed call again if it asked for retries (never after a timeout)."""
        if call.retries <= 0 or worker.killed_for in ("timeout", "interrupted", "shutdown"):
            return False
        call.retries -= 1
        call.worker = None
        call.deadline = None
        for name, offset in call.blocks:  # its blocks travel again: keep them
            worker.lent.discard((name, offset))
        log.warning(
            "%s: worker for environment %r (pid %d) died; running the call again (%d retries left)",
            call.name,
            worker.env,
            worker.pid,
            call.retries,
        )
        if call.pin is not None:
            self._fail(call, ReferenceLostError(call.env, call.pinned_what, "its worker died"))
        else:
            pool.queue.appendleft(call)
        return True

    def _forget_memory(self: Broker, worker: WorkerHandle, returncode: int | None) -> None:
        """A worker is gone: take back what it held, drop what it kept, fail what needed it."""
        if self._arena is not None:
            for name, offset in worker.lent:
                self._arena.free(name, offset)
        worker.lent.clear()
        if worker.started_file is not None:
            worker.started_file.unlink(missing_ok=True)
        unlink_owned(worker.prefix)
        if self._mapper is not None:
            self._mapper.forget(worker.prefix)
        reason = f"its worker (pid {worker.pid}) exited: {describe_exit(returncode)}"
        while worker.pinned:
            call = worker.pinned.popleft()
            self._fail(call, ReferenceLostError(call.env, call.pinned_what, reason))
        worker.kept.clear()

    def _after_start_failure(self: Broker, pool: Pool, error: WorkerStartError) -> None:
        if pool.start_failures >= START_FAILURE_LIMIT or self._stopping:
            pool.state = "failed"
            pool.error = WorkerStartError(
                error.env,
                error.pid,
                f"{error.reason}; gave up after {pool.start_failures} attempts in a row",
                error.stderr_tail,
                error.returncode,
            )
            while pool.queue:
                self._fail(pool.queue.popleft(), pool.error)

    def _check_timers(self: Broker, now: float) -> None:
        beat = self._heartbeat_timeout
        for worker in list(self._workers.values()):
            if worker.process.pidfd < 0 and worker.process.poll() is not None:
                self._reap(worker)
                continue
            hung = beat is not None and now >= worker.last_beat + beat
            if hung and worker.state in ("idle", "busy", "direct"):
                self._kill(worker, "heartbeat")
                continue
            if worker.state == "busy" and worker.call is not None:
                deadline = worker.call.deadline
                if deadline is not None and now >= deadline:
                    self._kill(worker, "timeout")
            elif worker.state == "starting" and now >= worker.started + self._start_timeout:
                self._kill(worker, "start timeout")
                pool = self._pools[worker.env]
                pool.start_failures += 1
                self._after_start_failure(
                    pool,
                    WorkerStartError(
                        worker.env,
                        worker.pid,
                        f"it did not say hello within {self._start_timeout:g}s",
                        worker.tail,
                    ),
                )
            elif worker.state == "idle" and not worker.kept:  # it keeps objects: it stays
                idle = self._pools[worker.env].config.idle_timeout
                if idle is not None and now >= worker.idle_since + idle:
                    self._send_shutdown(worker)
        for pool in self._pools.values():
            waiting = pool.waiting_since
            if pool.queue and waiting is not None and now >= waiting + self._start_timeout:
                if any(w.live for w in pool.workers):
                    pool.waiting_since = None
                    continue
                error = WorkerStartError(
                    pool.env,
                    0,
                    f"no worker on another machine joined within {self._start_timeout:g}s; start "
                    f"one there with: envrunner worker {pool.env} --connect "
                    f"{self.remote_address or 'tcp://HOST:PORT'} --keys DIR --client NAME",
                )
                pool.waiting_since = None
                while pool.queue:
                    self._fail(pool.queue.popleft(), error)
            elif not pool.queue:
                pool.waiting_since = None
        if self._stop_deadline is not None and now >= self._stop_deadline:
            for worker in list(self._workers.values()):
                if worker.state != "dead":
                    self._kill(worker, "shutdown")
            self._stop_deadline = now + SHUTDOWN_GRACE
