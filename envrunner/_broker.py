"""The broker: one thread in the caller that owns the workers and supervises them.

::

    caller threads                  broker thread                           workers
    ──────────────                  ─────────────                           ───────
    Task.submit()                   poll(ROUTER, wake pipe, worker pipes,
      encode args                        pidfds, next deadline)
      PendingCall ──► commands ───► new call ─► pool queue ─► idle worker ─► CALL (control) ──►
      (deque) + wake byte             pool not ready? ─► prepare thread (build) ─► "prepared"
                                    start workers up to `workers:` ───────────► spawn + key pipe
                                    HELLO ◄────────────────────────────────────────────────────
                                    WELCOME ──────────────────────────────────────────────────►
    Future.result() ◄── set_result ◄── RESULT ◄────────────────────────────────────────────────
      decode value
    Task(...)  (synchronous)
      checkout(): an idle worker ──── no broker thread involved ──── CALL (direct) ──────────►
      wait on its direct channel  ◄──────────────────────────────────── RESULT (direct) ──────
      give it back; decode          worker stdout/stderr ─► "[env] line" on the caller's streams
                                    HEARTBEAT (every heartbeat_timeout/6, 0.2-5 s, from a
                                               thread of the worker's own)
                                    pidfd readable ─► reap: the running call fails with
                                                      WorkerCrashed; queued calls get a new one
                                    deadline passed / heartbeats stopped ─► kill, report
                                    idle too long, or max_calls ─► SHUTDOWN

State shared with calling threads (worker states, queues) is guarded by one lock, which the
broker thread holds while it works and drops while it polls. Futures are completed after the
lock is dropped, so callbacks may call back into envrunner. Every call ends in a result or an
exception that says why: a dead worker fails the call it ran (retried on request), never the
queued ones; a failed build fails its pool's calls; a failing broker fails everything pending.

May import: the standard library, zmq, ``envrunner._calls``, ``_process``, ``_workers``,
``_runtime``.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ._calls import (
    SHUTDOWN_GRACE,
    START_FAILURE_LIMIT,
    PendingCall,
    PoolConfig,
    Prepared,
    RawResult,
    remote_error,
)
from ._direct import DirectCalls
from ._process import Launcher, LaunchRequest, LocalLauncher, worker_environ
from ._remote import RemoteWorkers
from ._runtime import wire
from ._runtime.errors import (
    EnvrunnerError,
    ProtocolError,
    ReferenceLostError,
    WorkerStartError,
)
from ._runtime.protocol import (
    KEY_BYTES,
    Heartbeat,
    Hello,
    Release,
    Result,
    Shutdown,
    Signer,
    Verifier,
    Welcome,
    pack,
    scope,
    unpack,
)
from ._runtime.shm import Arena, Mapper, unlink_owned
from ._supervision import Supervision
from ._workers import DirectChannel, WorkerHandle

log = logging.getLogger("envrunner.broker")


@dataclass(eq=False)
class Pool:
    """The workers and queued calls of one environment."""

    env: str
    config: PoolConfig
    state: str = "new"  # new | preparing | ready | failed
    prepared: Prepared | None = None
    error: BaseException | None = None
    queue: collections.deque[PendingCall] = field(default_factory=collections.deque)
    workers: list[WorkerHandle] = field(default_factory=list)
    start_failures: int = 0
    waiting_since: float | None = None  # calls wait for a remote worker since then


class Broker(DirectCalls, RemoteWorkers, Supervision):
    """Owns the ROUTER socket, the pools and the workers; runs in its own thread.

    Args:
        pools: Per environment, how its workers run.
        prepare: Builds (or finds) an environment; runs in a thread of its own per pool.
        runtime_root: The sealed runtime copy a prepared environment's workers start from.
        sys_path: The caller's project folders, for the workers' import path.
        start_timeout: Seconds a new worker has to say hello.
        heartbeat_timeout: Seconds without a heartbeat after which a worker counts as hung
            (None: never).
        launcher: Starts worker processes.
        rundir: The private folder of the sockets.
        arena, mapper, shm_threshold: The caller's shared memory (see ``_runtime/shm.py``).
    """

    def __init__(
        self,
        pools: Mapping[str, PoolConfig],
        prepare: Callable[[str, threading.Event], Prepared],
        runtime_root: Callable[[Prepared], Path],
        sys_path: list[str],
        *,
        rundir: Path,
        start_timeout: float = 60.0,
        heartbeat_timeout: float | None = 30.0,
        launcher: Launcher | None = None,
        arena: Arena | None = None,
        mapper: Mapper | None = None,
        shm_threshold: int = 0,
        max_message: int = -1,
        key: bytes | None = None,
        listen: str | None = None,
        keys: Path | None = None,
    ) -> None:
        self._pools = {name: Pool(name, config) for name, config in pools.items()}
        self._prepare = prepare
        self._runtime_root = runtime_root
        self._sys_path = sys_path
        self._start_timeout = start_timeout
        self._heartbeat_timeout = heartbeat_timeout
        self._launcher = launcher or LocalLauncher()
        self._rundir = rundir
        self._arena = arena
        self._mapper = mapper
        self._shm_threshold = shm_threshold if arena is not None else 0
        self._max_message = max_message
        self._key = key or secrets.token_bytes(KEY_BYTES)
        self._signer = Signer(self._key)
        self._verifier = Verifier(self._key)
        self._lock = threading.RLock()
        self._done: list[tuple[PendingCall, Any, BaseException | None]] = []
        self._commands: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        self._wake_lock = threading.Lock()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._context: zmq.Context[Any] = zmq.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.MAXMSGSIZE, max_message)
        self.address = f"ipc://{rundir / 'broker'}"
        self._router.bind(self.address)
        self._workers: dict[bytes, WorkerHandle] = {}
        self._fds: dict[int, tuple[WorkerHandle, str]] = {}
        self._poller = zmq.Poller()
        self._poller.register(self._router, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._remote: zmq.Socket[Any] | None = None
        self._auth: Any = None
        self.remote_address = ""
        if listen is not None:
            self._listen(listen, keys)
        self._cancel_builds = threading.Event()
        self._stopping = False
        self._stop_deadline: float | None = None
        self._rejected_by_gone = 0  # counted on the direct channels of workers now gone
        self._worker_count = 0
        self._thread = threading.Thread(target=self._run, name="envrunner-broker", daemon=True)
        self.closed = threading.Event()

    # ------------------------------------------------------------------ any thread

    def start(self) -> None:
        self._thread.start()

    def submit(self, call: PendingCall) -> None:
        """Hand a call over to the broker."""
        self._command("call", call)

    def shutdown(self, cancel: bool) -> None:
        """Ask the broker to finish; ``closed`` is set once everything is down."""
        self._command("shutdown", cancel)

    def kill_all(self) -> None:
        """Kill every worker now (a second Ctrl-C): the broker reaps them and closes."""
        with self._lock:
            self._stopping = True
            for worker in self._workers.values():
                self._kill(worker, "shutdown")
        self._command("shutdown", True)

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> dict[str, int]:
        """Counts for ``repr``: pools in use and live workers."""
        with self._lock:
            workers = list(self._workers.values())
            return {
                "pools": sum(1 for p in self._pools.values() if p.state != "new"),
                "workers": sum(1 for w in workers if w.live),
                "busy": sum(1 for w in workers if w.state in ("busy", "direct")),
            }

    def worker_pids(self, env: str | None = None) -> list[int]:
        """Pids of live workers (of one environment, or all)."""
        with self._lock:
            return [
                w.pid for w in self._workers.values() if w.live and (env is None or w.env == env)
            ]

    def rejected(self) -> int:
        """Messages dropped unread (bad signature, replay, malformed), on every channel."""
        with self._lock:
            direct = sum(w.direct.verifier.rejected for w in self._workers.values() if w.direct)
            return self._verifier.rejected + direct + self._rejected_by_gone

    def release(self, target: str | bytes, blocks: list[Any], refs: list[int]) -> None:
        """The caller is done with blocks of a worker's arena or with objects it keeps.

        Args:
            target: A segment name (its prefix names the worker) or a worker's identity.
        """
        self._command("release", target, blocks, refs)

    def _command(self, *command: Any) -> bool:
        """Hand the broker thread a command; False if the broker is gone."""
        with self._wake_lock:
            if self._wake_w < 0:
                return False  # the runner refuses calls before that happens
            self._commands.append(command)
            if len(self._commands) > 1:
                # Not the first waiting: whoever queued the first woke the broker, which takes
                # commands until the deque is empty (a write here costs ~15 us per submit).
                return True
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already: the broker will drain the deque
            return True

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            log.exception("envrunner broker failed")
            with self._lock:
                self._fail_everything(EnvrunnerError(f"the envrunner broker failed: {exc!r}"))
        finally:
            self._close()
            self._complete()

    def _loop(self) -> None:
        while True:
            with self._lock:
                timeout = self._next_timeout(time.monotonic())
            events = self._poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
            with self._lock:
                for target, _ in events:
                    if target is self._router:
                        self._drain_router(self._router)
                    elif self._remote is not None and target is self._remote:
                        self._drain_router(self._remote)
                    elif target == self._wake_r:
                        self._drain_commands()
                    else:
                        self._fd_ready(target)
                self._check_timers(time.monotonic())
                finished = self._stopping and self._finished()
            self._complete()
            if finished:
                return

    def _complete(self) -> None:
        """Complete futures outside the lock: their callbacks may call into envrunner."""
        with self._lock:
            done, self._done = self._done, []
        for call, value, error in done:
            future = call.future
            if future.done():
                continue
            if not future.running() and not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

    def _next_timeout(self, now: float) -> float | None:
        deadlines: list[float] = []
        beat = self._heartbeat_timeout
        for worker in self._workers.values():
            if worker.state == "busy" and worker.call and worker.call.deadline is not None:
                deadlines.append(worker.call.deadline)
            elif worker.state == "starting":
                deadlines.append(worker.started + self._start_timeout)
            elif worker.state == "idle" and not worker.kept:
                idle = self._pools[worker.env].config.idle_timeout
                if idle is not None:
                    deadlines.append(worker.idle_since + idle)
            if beat is not None and worker.state in ("idle", "busy", "direct"):
                deadlines.append(worker.last_beat + beat)
            if worker.state != "dead" and worker.process.pidfd < 0:
                deadlines.append(now + (1.0 if worker.remote else 0.1))  # no pidfd: poll
        for pool in self._pools.values():
            if pool.queue and pool.waiting_since is not None:
                deadlines.append(pool.waiting_since + self._start_timeout)
        if self._stop_deadline is not None:
            deadlines.append(self._stop_deadline)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _finished(self) -> bool:
        if any(w.state != "dead" for w in self._workers.values()):
            return False
        return not any(p.queue for p in self._pools.values())

    # ------------------------------------------------------------------ commands

    def _drain_commands(self) -> None:
        try:
            while os.read(self._wake_r, 65536):
                pass
        except BlockingIOError:
            pass
        while self._commands:
            command = self._commands.popleft()
            kind = command[0]
            if kind == "call":
                self._enqueue(command[1])
            elif kind == "pump":
                self._pump(self._pools[command[1]])
                self._stop_idle_workers()
            elif kind == "drain":
                self._drain_output(command[1])
                command[2].set()
            elif kind == "prepared":
                self._on_prepared(command[1], command[2])
            elif kind == "prepare_failed":
                self._on_prepare_failed(command[1], command[2])
            elif kind == "shutdown":
                self._begin_shutdown(cancel=command[1])
            elif kind == "release":
                self._queue_release(command[1], command[2], command[3])
        self._flush_releases()

    def _queue_release(self, target: str | bytes, blocks: list[Any], refs: list[int]) -> None:
        if isinstance(target, bytes):
            worker = self._workers.get(target)
        else:
            owners = (w for w in self._workers.values() if target.startswith(w.prefix + "-"))
            worker = next(owners, None)
        if worker is None or worker.state == "dead":
            return  # gone: what it held went with it
        worker.releases[0].extend(blocks)
        worker.releases[1].extend(refs)
        for ident in refs:
            worker.kept.discard(ident)

    def _flush_releases(self) -> None:
        for worker in self._workers.values():
            blocks, refs = worker.releases
            if (blocks or refs) and worker.state in ("idle", "busy", "direct"):
                self._send(worker, Release(blocks=list(blocks), refs=list(refs)))
                blocks.clear()
                refs.clear()

    def _enqueue(self, call: PendingCall) -> None:
        pool = self._pools[call.env]
        if pool.state == "failed":
            assert pool.error is not None
            self._fail(call, pool.error)
            return
        if call.pin is not None:
            worker = self._workers.get(call.pin)
            if worker is None or not worker.live:
                self._fail(
                    call, ReferenceLostError(call.env, call.pinned_what, "its worker has exited")
                )
                return
            worker.pinned.append(call)
        else:
            pool.queue.append(call)
        self._pump(pool)

    def _on_prepared(self, env: str, prepared: Prepared) -> None:
        pool = self._pools[env]
        pool.prepared = prepared
        pool.state = "ready"
        self._pump(pool)

    def _on_prepare_failed(self, env: str, error: BaseException) -> None:
        pool = self._pools[env]
        pool.state = "failed"
        pool.error = error
        while pool.queue:
            self._fail(pool.queue.popleft(), error)

    def _begin_shutdown(self, cancel: bool) -> None:
        self._stopping = True
        if cancel:
            self._cancel_builds.set()
            queued = [c for pool in self._pools.values() for c in pool.queue]
            queued += [c for worker in self._workers.values() for c in worker.pinned]
            for pool in self._pools.values():
                pool.queue.clear()
            for worker in self._workers.values():
                worker.pinned.clear()
            for call in queued:
                call.future.cancel()
                self._fail(call, CancelledError("the runner shut down first"))
            for worker in list(self._workers.values()):
                while worker.ahead:  # given to a worker: running, as far as the caller knows
                    ahead = worker.ahead.popleft()
                    self._fail(ahead, CancelledError("the runner shut down while the call ran"))
                if worker.state in ("busy", "direct") and worker.call is not None:
                    call, worker.call = worker.call, None
                    self._fail(call, CancelledError("the runner shut down while the call ran"))
                    self._kill(worker, "shutdown")
        for pool in self._pools.values():
            if pool.state == "preparing" and not pool.queue:
                self._cancel_builds.set()
        self._stop_idle_workers()

    def _stop_idle_workers(self) -> None:
        """While shutting down: let go of every worker that has nothing left to do."""
        if not self._stopping:
            return
        for worker in list(self._workers.values()):
            if self._pools[worker.env].queue or worker.pinned:
                continue
            if worker.state == "idle":
                self._send_shutdown(worker)
            elif worker.state == "starting":
                self._kill(worker, "shutdown")
        pending = any(p.queue for p in self._pools.values())
        busy = any(w.state in ("busy", "direct") for w in self._workers.values())
        if not pending and not busy and self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + SHUTDOWN_GRACE

    # ------------------------------------------------------------------ pools and workers

    def _pump(self, pool: Pool) -> None:
        """Dispatch queued calls to idle workers; start workers or the build as needed."""
        for worker in pool.workers:
            while worker.state == "idle" and (worker.pinned or pool.queue):
                call = worker.pinned.popleft() if worker.pinned else pool.queue.popleft()
                if not call.future.running() and not call.future.set_running_or_notify_cancel():
                    self._free_blocks(call)
                    continue  # cancelled while queued
                self._dispatch(worker, call)
        self._send_ahead(pool)
        if not pool.queue:
            return
        if not pool.config.local:
            pool.state = "ready" if pool.state == "new" else pool.state
            if pool.waiting_since is None:
                pool.waiting_since = time.monotonic()
            return  # its workers are on other machines: the calls wait for one to connect
        if pool.state == "new":
            pool.state = "preparing"
            threading.Thread(
                target=self._prepare_thread,
                args=(pool.env,),
                name=f"envrunner-prepare-{pool.env}",
                daemon=True,
            ).start()
            return
        if pool.state != "ready":
            return
        live = [w for w in pool.workers if w.live and not w.remote]
        starting = sum(1 for w in live if w.state == "starting")
        wanted = min(len(pool.queue) - starting, pool.config.workers - len(live))
        for _ in range(max(0, wanted)):
            self._start_worker(pool)

    def _send_ahead(self, pool: Pool) -> None:
        """With a backlog, keep every busy worker a few calls ahead: no round trip between them.

        Only while calls wait (so a free worker is never passed over), never to a worker that
        calls on its kept objects wait for (they would wait behind every call sent ahead), and
        only unpinned calls. A call sent ahead counts as running from then on, as in
        ``ProcessPoolExecutor``'s call queue: the worker starts it the moment it has answered
        the one before, so ``cancel()`` could not promise it will not run. Its timeout starts
        when the broker sees the call before it answered.
        """
        window = pool.config.window
        if window <= 1 or not pool.queue:
            return
        local = [w for w in pool.workers if w.live and not w.remote]
        if len(local) < pool.config.workers or any(w.state == "starting" for w in local):
            return  # a worker will be free (or started) for them: no need to queue behind one
        busy = [w for w in local if w.state == "busy" and not w.pinned]
        for _ in range(window - 1):
            for worker in busy:
                if not pool.queue:
                    return
                if len(worker.ahead) + 1 >= window or self._recycle_soon(pool, worker):
                    continue
                call = pool.queue.popleft()
                if not call.future.running() and not call.future.set_running_or_notify_cancel():
                    self._free_blocks(call)
                    continue  # cancelled while queued
                self._dispatch(worker, call)

    def _recycle_soon(self, pool: Pool, worker: WorkerHandle) -> bool:
        limit = pool.config.max_calls
        in_flight = 1 + len(worker.ahead)
        return limit is not None and worker.calls + in_flight >= limit

    def _prepare_thread(self, env: str) -> None:
        try:
            prepared = self._prepare(env, self._cancel_builds)
        except BaseException as exc:
            self._command("prepare_failed", env, exc)
        else:
            self._command("prepared", env, prepared)

    def _start_worker(self, pool: Pool) -> None:
        prepared = pool.prepared
        assert prepared is not None
        self._worker_count += 1
        identity = f"w{self._worker_count}".encode()
        direct = DirectChannel(
            self._context,
            f"ipc://{self._rundir / f'd{self._worker_count}'}",
            self._key,
            identity,
            self._max_message,
        )
        started = self._rundir / f"s{self._worker_count}"
        started.write_bytes(bytes(8))
        request = LaunchRequest(
            env=pool.env,
            python=prepared.python,
            address=self.address,
            worker_id=identity.decode(),
            key=self._key,
            environ=worker_environ(
                os.environ, prepared.bin_dir, prepared.virtual_env, prepared.environ
            ),
            runtime_root=self._runtime_root(prepared),
            append_paths=prepared.append_paths,
            direct_address=direct.address,
            max_message=self._max_message,
            started_path=str(started),
        )
        try:
            process = self._launcher.launch(request)
        except OSError as exc:
            direct.close()
            started.unlink(missing_ok=True)
            pool.start_failures += 1
            self._after_start_failure(
                pool, WorkerStartError(pool.env, 0, f"cannot run {prepared.python}: {exc}")
            )
            return
        worker = WorkerHandle(identity, pool.env, process, direct, started_file=started)
        direct.watch(process.pidfd)
        pool.workers.append(worker)
        self._workers[identity] = worker
        for fd, kind in ((process.stdout_fd, "out"), (process.stderr_fd, "err")):
            self._fds[fd] = (worker, kind)
            self._poller.register(fd, zmq.POLLIN)
        if process.pidfd >= 0:
            self._fds[process.pidfd] = (worker, "exit")
            self._poller.register(process.pidfd, zmq.POLLIN)
        log.debug("started %r", worker)

    def _dispatch(self, worker: WorkerHandle, call: PendingCall) -> None:
        worker.state = "busy"
        call.worker = worker
        if worker.call is None:
            worker.call = call
            if call.timeout is not None:
                call.deadline = time.monotonic() + call.timeout
        else:  # sent ahead: the worker starts it when the one before is answered
            worker.ahead.append(call)
        worker.lent.update((name, offset) for name, offset in call.blocks)
        message = call.message()
        self._send(worker, message)

    def _send(self, worker: WorkerHandle, message: Any) -> None:
        router = self._remote if worker.remote and self._remote is not None else self._router
        try:
            frames = pack(message, self._signer, scope("to", worker.identity))
            wire.send(router, frames, (worker.identity,))
        except zmq.ZMQError as exc:
            # The worker is gone (EHOSTUNREACH): its exit, seen next, fails its call.
            log.debug("cannot send to %r: %s", worker, exc)

    def _send_shutdown(self, worker: WorkerHandle) -> None:
        worker.state = "stopping"
        self._send(worker, Shutdown())
        if worker.remote:
            worker.process.kill()  # it will not tell us it left: count it gone now

    def _kill(self, worker: WorkerHandle, reason: str) -> None:
        worker.killed_for = worker.killed_for or reason
        if worker.state != "dead":
            worker.state = "stopping"
        if worker.remote:
            self._send(worker, Shutdown())  # no signal crosses machines: ask it to go
        worker.process.kill()

    def _recycle(self, pool: Pool, worker: WorkerHandle) -> bool:
        """Whether a worker has served its ``max_calls`` and should make way for a new one."""
        limit = pool.config.max_calls
        return limit is not None and worker.calls >= limit and not worker.kept

    # ------------------------------------------------------------------ messages

    def _drain_router(self, router: zmq.Socket[Any]) -> None:
        remote = router is self._remote
        while True:
            try:
                frames = wire.receive(router, zmq.NOBLOCK)
            except zmq.Again:
                return
            identity = frames[0]
            beat = identity.endswith(b".hb")
            worker = self._workers.get(identity[:-3] if beat else identity)
            if worker is None and remote and not beat:
                worker = self._admit_remote(identity, frames[1:])
                continue
            if worker is None or worker.state == "dead" or worker.remote != remote:
                self._verifier.rejected += 1
                log.warning("dropped a message from an unknown peer")
                continue
            try:
                message = unpack(scope("from", identity), frames[1:], self._verifier)
            except ProtocolError as exc:
                # Another version of the runtime: every new worker would say the same.
                self._kill(worker, "protocol")
                pool = self._pools[worker.env]
                pool.start_failures = START_FAILURE_LIMIT
                self._after_start_failure(
                    pool, WorkerStartError(worker.env, worker.pid, str(exc), worker.tail)
                )
                continue
            if message is None:
                log.warning("dropped an invalid message from %r", worker)
            elif isinstance(message, Heartbeat):
                worker.last_beat = time.monotonic()
            elif beat:
                log.warning(
                    "dropped a %s on %r's heartbeat channel", type(message).__name__, worker
                )
            elif isinstance(message, Result):
                self._on_result(worker, message)
            elif isinstance(message, Hello):
                self._on_hello(worker, message)

    def _on_hello(self, worker: WorkerHandle, hello: Hello) -> None:
        if worker.state != "starting":
            return
        pool = self._pools[worker.env]
        options: dict[str, Any] = {}
        if self._shm_threshold and not worker.remote:
            options["shm"] = {"owner": os.getpid(), "threshold": self._shm_threshold}
        if self._heartbeat_timeout is not None:
            options["heartbeat"] = min(5.0, max(0.2, self._heartbeat_timeout / 6))
        self._send(
            worker,
            Welcome(
                env=worker.env,
                cwd=os.getcwd(),
                sys_path=self._sys_path,
                caller_python=tuple(sys.version_info[:3]),  # type: ignore[arg-type]
                pickle_protocol=min(5, hello.pickle_protocol),
                options=options,
            ),
        )
        worker.state = "idle"
        worker.idle_since = worker.last_beat = time.monotonic()
        pool.start_failures = 0
        log.debug("%r said hello: Python %s", worker, ".".join(map(str, hello.python)))
        self._pump(pool)
        self._stop_idle_workers()

    def _book_result(self, worker: WorkerHandle, result: Result) -> None:
        """What any answer says besides its value: blocks given back, objects kept."""
        worker.calls += 1
        for name, offset in result.freed:
            worker.lent.discard((name, offset))
            if self._arena is not None:
                self._arena.free(name, offset)
        if result.kept:
            worker.kept.add(result.kept)

    def _on_result(self, worker: WorkerHandle, result: Result) -> None:
        call = worker.call
        if worker.state != "busy" or call is None or call.call_id != result.call_id:
            log.warning("dropped an unexpected result from %r", worker)
            return
        self._drain_output(worker)
        self._book_result(worker, result)
        worker.call = worker.ahead.popleft() if worker.ahead else None
        pool = self._pools[worker.env]
        if worker.call is not None:  # the next one sent ahead has started
            if worker.call.timeout is not None:
                worker.call.deadline = time.monotonic() + worker.call.timeout
        elif self._recycle(pool, worker):
            self._send_shutdown(worker)
        else:
            worker.state = "idle"
            worker.idle_since = time.monotonic()
        if result.ok:
            if result.segments and self._mapper is not None:
                self._mapper.attach(result.segments)  # before the worker can go and unlink them
            raw = RawResult(
                result.payload, list(result.buffers), worker.identity, worker.pid, result.kept
            )
            self._settle(call, raw)
        else:
            self._fail(call, remote_error(call, result.payload))
        self._pump(pool)
        self._stop_idle_workers()

    def _settle(self, call: PendingCall, value: Any) -> None:
        if not call.finished:
            call.finished = True
            self._done.append((call, value, None))

    def _fail(self, call: PendingCall, error: BaseException) -> None:
        if call.worker is None:
            self._free_blocks(call)
        if not call.finished:
            call.finished = True
            self._done.append((call, None, error))

    def _free_blocks(self, call: PendingCall) -> None:
        """Take back the arena blocks of a call that never reached a worker."""
        if self._arena is not None:
            for name, offset in call.blocks:
                self._arena.free(name, offset)
        call.blocks = []

    # ------------------------------------------------------------------ the end

    def _fail_everything(self, error: BaseException) -> None:
        for pool in self._pools.values():
            while pool.queue:
                self._fail(pool.queue.popleft(), error)
        for worker in self._workers.values():
            if worker.call is not None:
                self._fail(worker.call, error)
                worker.call = None
            while worker.ahead:
                self._fail(worker.ahead.popleft(), error)
            while worker.pinned:
                self._fail(worker.pinned.popleft(), error)
        while self._commands:
            command = self._commands.popleft()
            if command[0] == "call":
                self._fail(command[1], error)

    def _close(self) -> None:
        self._cancel_builds.set()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            if worker.remote:
                self._send(worker, Shutdown())
            worker.process.kill()
            worker.process.wait(SHUTDOWN_GRACE)
            with self._lock:
                worker.state = "dead"
                if not worker.in_direct_call:
                    self._close_worker(worker)
                unlink_owned(worker.prefix)
        with self._lock:
            self._workers.clear()
            self._fail_everything(
                EnvrunnerError("the runner shut down before this call was handled")
            )
        self._router.close(linger=0)
        if self._remote is not None:
            self._remote.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._context.term()
        shutil.rmtree(self._rundir, ignore_errors=True)
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        self.closed.set()
