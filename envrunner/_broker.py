"""The broker: one thread in the caller that owns every socket and every worker process.

::

    caller threads                 broker thread                            workers
    ──────────────                 ─────────────                            ───────
    Task.submit()                  poll(ROUTER, wake pipe, worker pipes,
      encode args                       pidfds, next deadline)
      PendingCall ──► commands ──► drain commands:
      (deque) + wake byte            new call ─► pool queue ─► idle worker? ─► CALL ───────►
                                     pool not ready? ─► prepare thread
                                                        (build env) ──► "prepared" command
                                   start workers up to `workers:` ─────────► spawn + key pipe
                                   HELLO ◄───────────────────────────────────────────────────
                                   WELCOME ─────────────────────────────────────────────────►
    Future.result() ◄── set_result ◄── RESULT ◄─────────────────────────────────────────────
      decode value                 worker stdout/stderr ─► "[env] line" on the caller's streams
                                   pidfd readable ─► reap: the running call fails with
                                                     WorkerCrashed; queued calls get a new worker
                                   deadline passed ─► kill worker, TaskTimeoutError
                                   idle too long ─► SHUTDOWN

Every call ends in a result or an exception that says why: a worker that dies fails the call it
was running (with its exit status and last stderr lines), never the queued ones; a pool whose
build fails fails its calls with the build's error; a broker that itself fails fails everything
that is pending. Callers never touch sockets: they hand work over through a thread-safe deque
and a byte written to a pipe that wakes the broker.

May import: the standard library, zmq, ``envrunner._process``, ``envrunner._runtime``.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ._process import Launcher, LaunchRequest, LocalLauncher, WorkerProcess, worker_environ
from ._runtime.codec import Decoder
from ._runtime.errors import (
    EnvrunnerError,
    ProtocolError,
    ReferenceLostError,
    RemoteError,
    RemoteTraceback,
    TaskTimeoutError,
    WorkerCrashed,
    WorkerStartError,
    describe_exit,
)
from ._runtime.protocol import (
    KEY_BYTES,
    Call,
    Hello,
    Release,
    Result,
    Shutdown,
    Signer,
    Verifier,
    Welcome,
    pack,
    unpack,
)
from ._runtime.shm import Arena, Mapper, unlink_owned

log = logging.getLogger("envrunner.broker")

STDERR_TAIL = 20
START_FAILURE_LIMIT = 3
SHUTDOWN_GRACE = 5.0


@dataclass(frozen=True)
class Prepared:
    """An environment ready to run workers: what the broker needs to start one."""

    name: str
    python: Path
    version: tuple[int, int, int]
    bin_dir: Path | None = None
    virtual_env: Path | None = None
    append_paths: tuple[str, ...] = ()
    environ: Mapping[str, str] = field(default_factory=dict)


@dataclass(eq=False)
class PendingCall:
    """A call from submission to its answer; the broker owns it once submitted."""

    call_id: int
    env: str
    name: str
    code: bytes
    payload: bytes
    buffers: list[Any]
    timeout: float | None
    future: Future[Any]
    segments: list[str] = field(default_factory=list)
    blocks: list[list[Any]] = field(default_factory=list)  # the caller's arena blocks it lends
    keep: bool = False
    pin: bytes | None = None  # the worker holding the objects its arguments refer to
    pinned_what: str = ""
    worker: WorkerHandle | None = None
    deadline: float | None = None


@dataclass(eq=False)
class RawResult:
    """A successful call's answer, decoded in the thread that asks for it."""

    payload: bytes
    buffers: list[Any]
    worker: bytes = b""
    pid: int = 0
    kept: int = 0


@dataclass(eq=False)
class WorkerHandle:
    """The broker's view of one worker process."""

    identity: bytes
    env: str
    process: WorkerProcess
    state: str = "starting"  # starting | idle | busy | stopping | dead
    call: PendingCall | None = None
    started: float = field(default_factory=time.monotonic)
    idle_since: float = field(default_factory=time.monotonic)
    calls: int = 0
    killed_for: str = ""
    out_open: bool = True
    err_open: bool = True
    partial: dict[str, bytes] = field(default_factory=lambda: {"out": b"", "err": b""})
    tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=STDERR_TAIL)
    )
    lent: set[tuple[str, int]] = field(default_factory=set)  # caller blocks it holds
    kept: set[int] = field(default_factory=set)  # ids of objects it keeps for the caller
    pinned: collections.deque[PendingCall] = field(default_factory=collections.deque)
    releases: tuple[list[list[Any]], list[int]] = field(default_factory=lambda: ([], []))

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def prefix(self) -> str:
        """Its shared-memory segments' names start with this."""
        return f"envrunner-{os.getpid()}-{self.pid}"

    def __repr__(self) -> str:
        return f"<Worker env={self.env!r} pid={self.pid} {self.state} calls={self.calls}>"


@dataclass(eq=False)
class Pool:
    """The workers and queued calls of one environment."""

    env: str
    max_workers: int
    idle_timeout: float | None
    state: str = "new"  # new | preparing | ready | failed
    prepared: Prepared | None = None
    error: BaseException | None = None
    queue: collections.deque[PendingCall] = field(default_factory=collections.deque)
    workers: list[WorkerHandle] = field(default_factory=list)
    start_failures: int = 0

    def live(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.state in ("starting", "idle", "busy")]


class Broker:
    """Owns the ROUTER socket, the pools and the workers; runs in its own thread.

    Args:
        pools: Per environment: (most workers at once, idle timeout or None).
        prepare: Builds (or finds) an environment; runs in a thread of its own per pool.
        start_timeout: Seconds a new worker has to say hello.
        launcher: Starts worker processes.
    """

    def __init__(
        self,
        pools: Mapping[str, tuple[int, float | None]],
        prepare: Callable[[str, threading.Event], Prepared],
        runtime_root: Callable[[Prepared], Path],
        sys_path: list[str],
        *,
        start_timeout: float = 60.0,
        launcher: Launcher | None = None,
        rundir: Path,
        arena: Arena | None = None,
        mapper: Mapper | None = None,
        shm_threshold: int = 0,
    ) -> None:
        self._pools = {
            name: Pool(name, max(1, workers), idle) for name, (workers, idle) in pools.items()
        }
        self._prepare = prepare
        self._runtime_root = runtime_root
        self._sys_path = sys_path
        self._start_timeout = start_timeout
        self._launcher = launcher or LocalLauncher()
        self._rundir = rundir
        self._key = secrets.token_bytes(KEY_BYTES)
        self._signer = Signer(self._key)
        self._verifier = Verifier(self._key)
        self._commands: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        self._wake_lock = threading.Lock()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._context = zmq.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.address = f"ipc://{rundir / 'broker'}"
        self._router.bind(self.address)
        self._workers: dict[bytes, WorkerHandle] = {}
        self._fds: dict[int, tuple[WorkerHandle, str]] = {}
        self._poller = zmq.Poller()
        self._poller.register(self._router, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._cancel_builds = threading.Event()
        self._stopping = False
        self._stop_deadline: float | None = None
        self._worker_count = 0
        self._decoder = Decoder(where="the caller")
        self._arena = arena
        self._mapper = mapper
        self._shm_threshold = shm_threshold if arena is not None else 0
        self._thread = threading.Thread(target=self._run, name="envrunner-broker", daemon=True)
        self.closed = threading.Event()

    # ------------------------------------------------------------------ caller threads

    def start(self) -> None:
        self._thread.start()

    def submit(self, call: PendingCall) -> None:
        """Hand a call over to the broker (any thread)."""
        self._command("call", call)

    def shutdown(self, cancel: bool) -> None:
        """Ask the broker to finish (any thread); ``closed`` is set once everything is down."""
        self._command("shutdown", cancel)

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> dict[str, int]:
        """Counts for ``repr``: pools in use and live workers (read without locking)."""
        workers = list(self._workers.values())
        return {
            "pools": sum(1 for p in self._pools.values() if p.state != "new"),
            "workers": sum(1 for w in workers if w.state in ("starting", "idle", "busy")),
            "busy": sum(1 for w in workers if w.state == "busy"),
        }

    def worker_pids(self, env: str | None = None) -> list[int]:
        """Pids of live workers (of one environment, or all)."""
        return [
            w.pid
            for w in list(self._workers.values())
            if w.state in ("starting", "idle", "busy") and (env is None or w.env == env)
        ]

    def _command(self, *command: Any) -> None:
        with self._wake_lock:
            if self._wake_w < 0:
                return  # the broker is gone; the runner refuses calls before that happens
            self._commands.append(command)
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already: the broker will drain the deque

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            log.exception("envrunner broker failed")
            self._fail_everything(EnvrunnerError(f"the envrunner broker failed: {exc!r}"))
        finally:
            self._close()

    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            timeout = self._next_timeout(now)
            events = self._poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
            for target, _ in events:
                if target is self._router:
                    self._drain_router()
                elif target == self._wake_r:
                    self._drain_commands()
                else:
                    self._fd_ready(target)
            self._check_timers(time.monotonic())
            if self._stopping and self._finished():
                return

    def _next_timeout(self, now: float) -> float | None:
        deadlines: list[float] = []
        for worker in self._workers.values():
            if worker.state == "busy" and worker.call and worker.call.deadline is not None:
                deadlines.append(worker.call.deadline)
            elif worker.state == "starting":
                deadlines.append(worker.started + self._start_timeout)
            elif worker.state == "idle" and not worker.kept:
                idle = self._pools[worker.env].idle_timeout
                if idle is not None:
                    deadlines.append(worker.idle_since + idle)
            if worker.state != "dead" and worker.process.pidfd < 0:
                deadlines.append(now + 0.1)  # no pidfd here: poll for exits
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
            elif kind == "prepared":
                self._on_prepared(command[1], command[2])
            elif kind == "prepare_failed":
                self._on_prepare_failed(command[1], command[2])
            elif kind == "shutdown":
                self._begin_shutdown(cancel=command[1])
            elif kind == "release":
                self._queue_release(command[1], command[2], command[3])
        self._flush_releases()

    def release(self, segment_or_worker: str | bytes, blocks: list[Any], refs: list[int]) -> None:
        """The caller is done with blocks of a worker's arena or objects it keeps (any thread).

        Args:
            segment_or_worker: A segment name (its prefix names the worker) or a worker identity.
        """
        self._command("release", segment_or_worker, blocks, refs)

    def _queue_release(self, target: str | bytes, blocks: list[Any], refs: list[int]) -> None:
        if isinstance(target, bytes):
            worker = self._workers.get(target)
        else:
            worker = next(
                (w for w in self._workers.values() if target.startswith(w.prefix + "-")), None
            )
        if worker is None or worker.state == "dead":
            return  # gone: what it held went with it
        worker.releases[0].extend(blocks)
        worker.releases[1].extend(refs)
        for ident in refs:
            worker.kept.discard(ident)

    def _flush_releases(self) -> None:
        for worker in self._workers.values():
            blocks, refs = worker.releases
            if (blocks or refs) and worker.state in ("idle", "busy"):
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
            if worker is None or worker.state not in ("idle", "busy"):
                self._fail(
                    call,
                    ReferenceLostError(call.env, call.pinned_what, "its worker has exited"),
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
                if worker.state == "busy" and worker.call is not None:
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
            if self._pools[worker.env].queue:
                continue
            if worker.state == "idle":
                self._send_shutdown(worker)
            elif worker.state == "starting":
                self._kill(worker, "shutdown")
        pending = any(p.queue for p in self._pools.values())
        busy = any(w.state == "busy" for w in self._workers.values())
        if not pending and not busy and self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + SHUTDOWN_GRACE

    # ------------------------------------------------------------------ pools and workers

    def _pump(self, pool: Pool) -> None:
        """Dispatch queued calls to idle workers; start workers or the build as needed."""
        for worker in pool.workers:
            while worker.state == "idle" and (worker.pinned or pool.queue):
                call = worker.pinned.popleft() if worker.pinned else pool.queue.popleft()
                if not call.future.set_running_or_notify_cancel():
                    self._free_blocks(call)
                    continue  # cancelled while queued
                self._dispatch(worker, call)
        if not pool.queue:
            return
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
        starting = sum(1 for w in pool.workers if w.state == "starting")
        wanted = min(len(pool.queue) - starting, pool.max_workers - len(pool.live()))
        for _ in range(max(0, wanted)):
            self._start_worker(pool)

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
        )
        try:
            process = self._launcher.launch(request)
        except OSError as exc:
            error = WorkerStartError(pool.env, 0, f"cannot run {prepared.python}: {exc}")
            pool.start_failures += 1
            self._after_start_failure(pool, error)
            return
        worker = WorkerHandle(identity, pool.env, process)
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
        worker.call = call
        call.worker = worker
        if call.timeout is not None:
            call.deadline = time.monotonic() + call.timeout
        worker.lent.update((name, offset) for name, offset in call.blocks)
        message = Call(
            call_id=call.call_id,
            name=call.name,
            code=call.code,
            payload=call.payload,
            segments=call.segments,
            keep=call.keep,
            buffers=call.buffers,
        )
        self._send(worker, message)

    def _send(self, worker: WorkerHandle, message: Any) -> None:
        try:
            self._router.send_multipart([worker.identity, *pack(message, self._signer)], copy=False)
        except zmq.ZMQError as exc:
            # The worker is gone (EHOSTUNREACH): its exit, seen next, fails its call.
            log.debug("cannot send to %r: %s", worker, exc)

    def _send_shutdown(self, worker: WorkerHandle) -> None:
        worker.state = "stopping"
        self._send(worker, Shutdown())

    def _kill(self, worker: WorkerHandle, reason: str) -> None:
        worker.killed_for = worker.killed_for or reason
        if worker.state != "dead":
            worker.state = "stopping"
        worker.process.kill()

    # ------------------------------------------------------------------ messages

    def _drain_router(self) -> None:
        while True:
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            worker = self._workers.get(identity)
            if worker is None or worker.state == "dead":
                log.warning("dropped a message from an unknown peer")
                continue
            try:
                message = unpack(identity, [f.buffer for f in frames[1:]], self._verifier)
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
                continue
            if isinstance(message, Result):
                self._on_result(worker, message)
            elif isinstance(message, Hello):
                self._on_hello(worker, message)

    def _on_hello(self, worker: WorkerHandle, hello: Hello) -> None:
        if worker.state != "starting":
            return
        pool = self._pools[worker.env]
        assert pool.prepared is not None
        options: dict[str, Any] = {}
        if self._shm_threshold:
            options["shm"] = {"owner": os.getpid(), "threshold": self._shm_threshold}
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
        worker.idle_since = time.monotonic()
        pool.start_failures = 0
        log.debug("%r said hello: Python %s", worker, ".".join(map(str, hello.python)))
        self._pump(pool)
        self._stop_idle_workers()

    def _on_result(self, worker: WorkerHandle, result: Result) -> None:
        call = worker.call
        if worker.state != "busy" or call is None or call.call_id != result.call_id:
            log.warning("dropped an unexpected result from %r", worker)
            return
        self._drain_output(worker)
        worker.call = None
        worker.calls += 1
        worker.state = "idle"
        worker.idle_since = time.monotonic()
        for name, offset in result.freed:
            worker.lent.discard((name, offset))
            if self._arena is not None:
                self._arena.free(name, offset)
        if result.kept:
            worker.kept.add(result.kept)
        if result.ok:
            if result.segments and self._mapper is not None:
                self._mapper.attach(result.segments)  # before the worker can go and unlink them
            raw = RawResult(
                result.payload, list(result.buffers), worker.identity, worker.pid, result.kept
            )
            self._settle(call, raw)
        else:
            self._fail(call, self._remote_error(call, result.payload))
        pool = self._pools[worker.env]
        self._pump(pool)
        self._stop_idle_workers()

    def _remote_error(self, call: PendingCall, payload: bytes) -> BaseException:
        try:
            type_name, message, text, blob = self._decoder.decode(payload)
        except Exception as exc:
            return EnvrunnerError(f"{call.name} failed and its error could not be read: {exc}")
        error: BaseException | None = None
        if blob is not None:
            try:
                error = Decoder(where="the caller").decode(blob)
            except Exception:
                error = None
            if not isinstance(error, BaseException):
                error = None
        if error is None:
            error = RemoteError(type_name, message, call.env)
        error.__cause__ = RemoteTraceback(text)
        return error

    def _settle(self, call: PendingCall, value: Any) -> None:
        if not call.future.done():
            call.future.set_result(value)

    def _fail(self, call: PendingCall, error: BaseException) -> None:
        if call.worker is None:
            self._free_blocks(call)
        if call.future.done():
            return
        if call.future.running() or call.future.set_running_or_notify_cancel():
            call.future.set_exception(error)

    def _free_blocks(self, call: PendingCall) -> None:
        """Take back the arena blocks of a call that never reached a worker."""
        if self._arena is not None:
            for name, offset in call.blocks:
                self._arena.free(name, offset)
        call.blocks = []

    # ------------------------------------------------------------------ processes

    def _fd_ready(self, fd: int) -> None:
        entry = self._fds.get(fd)
        if entry is None:
            return
        worker, kind = entry
        if kind == "exit":
            self._reap(worker)
        else:
            self._read(worker, kind)

    def _read(self, worker: WorkerHandle, kind: str) -> None:
        fd = worker.process.stdout_fd if kind == "out" else worker.process.stderr_fd
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_stream(worker, kind)
                return
            self._emit(worker, kind, worker.partial[kind] + data)

    def _emit(self, worker: WorkerHandle, kind: str, data: bytes, final: bool = False) -> None:
        *lines, rest = data.split(b"\n")
        if final and rest:
            lines.append(rest)
            rest = b""
        worker.partial[kind] = rest
        if not lines:
            return
        stream = sys.stdout if kind == "out" else sys.stderr
        prefix = f"[{worker.env}] "
        text = []
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if kind == "err":
                worker.tail.append(line)
            text.append(prefix + line + "\n")
        if stream is not None:
            try:
                stream.write("".join(text))
                stream.flush()
            except (OSError, ValueError):
                pass

    def _close_stream(self, worker: WorkerHandle, kind: str) -> None:
        fd = worker.process.stdout_fd if kind == "out" else worker.process.stderr_fd
        if kind == "out" and worker.out_open:
            worker.out_open = False
        elif kind == "err" and worker.err_open:
            worker.err_open = False
        else:
            return
        if fd in self._fds:
            del self._fds[fd]
            self._poller.unregister(fd)
        self._emit(worker, kind, worker.partial[kind], final=True)

    def _drain_output(self, worker: WorkerHandle) -> None:
        """Forward what the worker wrote before its result, so output precedes the result."""
        if worker.out_open:
            self._read(worker, "out")
        if worker.err_open:
            self._read(worker, "err")

    def _reap(self, worker: WorkerHandle) -> None:
        if worker.state == "dead":
            return
        returncode = worker.process.poll()
        if returncode is None:
            return
        self._drain_output(worker)
        for kind in ("out", "err"):
            self._close_stream(worker, kind)
        pidfd = worker.process.pidfd
        if pidfd in self._fds:
            del self._fds[pidfd]
            self._poller.unregister(pidfd)
        previous = worker.state
        worker.state = "dead"
        worker.process.close()
        self._verifier.forget(worker.identity)
        self._workers.pop(worker.identity, None)
        pool = self._pools[worker.env]
        if worker in pool.workers:
            pool.workers.remove(worker)
        log.debug("%r exited: %s", worker, returncode)
        self._forget_memory(worker, returncode)
        call, worker.call = worker.call, None
        if call is not None:
            if worker.killed_for == "timeout":
                self._fail(
                    call, TaskTimeoutError(call.env, call.name, call.timeout or 0, worker.pid)
                )
            else:
                self._fail(
                    call, WorkerCrashed(worker.env, worker.pid, returncode, worker.tail, call.name)
                )
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

    def _forget_memory(self, worker: WorkerHandle, returncode: int | None) -> None:
        """A worker is gone: take back what it held, drop what it kept, fail what needed it."""
        if self._arena is not None:
            for name, offset in worker.lent:
                self._arena.free(name, offset)
        worker.lent.clear()
        unlink_owned(worker.prefix)
        if self._mapper is not None:
            self._mapper.forget(worker.prefix)
        reason = f"its worker (pid {worker.pid}) exited: {describe_exit(returncode)}"
        while worker.pinned:
            call = worker.pinned.popleft()
            self._fail(call, ReferenceLostError(call.env, call.pinned_what, reason))
        worker.kept.clear()

    def _after_start_failure(self, pool: Pool, error: WorkerStartError) -> None:
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

    def _check_timers(self, now: float) -> None:
        for worker in list(self._workers.values()):
            if (
                worker.process.pidfd < 0
                and worker.state != "dead"
                and worker.process.poll() is not None
            ):
                self._reap(worker)
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
                idle = self._pools[worker.env].idle_timeout
                if idle is not None and now >= worker.idle_since + idle:
                    self._send_shutdown(worker)
        if self._stop_deadline is not None and now >= self._stop_deadline:
            for worker in list(self._workers.values()):
                if worker.state != "dead":
                    self._kill(worker, "shutdown")
            self._stop_deadline = now + SHUTDOWN_GRACE

    # ------------------------------------------------------------------ the end

    def _fail_everything(self, error: BaseException) -> None:
        for pool in self._pools.values():
            while pool.queue:
                self._fail(pool.queue.popleft(), error)
        for worker in self._workers.values():
            if worker.call is not None:
                self._fail(worker.call, error)
                worker.call = None
            while worker.pinned:
                self._fail(worker.pinned.popleft(), error)
        while self._commands:
            command = self._commands.popleft()
            if command[0] == "call":
                self._fail(command[1], error)

    def _close(self) -> None:
        self._cancel_builds.set()
        for worker in list(self._workers.values()):
            worker.process.kill()
            try:
                worker.process.popen.wait(timeout=SHUTDOWN_GRACE)
            except Exception:
                pass
            worker.process.close()
        self._workers.clear()
        self._fail_everything(EnvrunnerError("the runner shut down before this call was handled"))
        self._router.close(linger=0)
        self._context.term()
        import shutil

        shutil.rmtree(self._rundir, ignore_errors=True)
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        self.closed.set()
