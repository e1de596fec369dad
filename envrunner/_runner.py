"""``Runner``: one manifest's environments, their broker and workers; the default runner.

::

    Runner.call / submit / map
      encode (``_tickets``) ─► Ticket(CallRequest) ─► Broker.direct.run (sync, idle worker)
                                                  └► Broker.submit ─► the broker thread
      CallFuture ◄─ completed by the broker; decoded by whoever asks (``_futures``)
    first call ─► Scheduler + Broker made (``_assembly``); pools prepared on demand
                  (``_prepare.Environments``)
    shutdown ─► the scheduler drains or cancels; every process and socket file goes

The runners of the process (the ``with`` stack, the default one, the exit and fork hooks)
are kept by ``_registry``.

May import: the standard library, and the caller-side ``envrunner`` modules below the API
(``_actions``, ``_assembly``, ``_broker``, ``_cached``, ``_calls``, ``_environments``,
``_executor``, ``_futures``, ``_link``, ``_live``, ``_manifest``, ``_options``, ``_prepare``,
``_progress``, ``_registry``, ``_results``, ``_tickets``, ``_runtime``).
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from . import _registry
from ._actions import Ticket
from ._assembly import check_listen, make_broker
from ._calls import UndecodedError
from ._futures import CallFuture
from ._link import RunnerLink
from ._options import Options
from ._prepare import Environments
from ._runtime.errors import EnvrunnerError, RunnerClosedError
from ._tickets import make_ticket

if TYPE_CHECKING:
    from ._broker import Broker
    from ._environments import Resolved
    from ._executor import EnvExecutor
    from ._live import LiveView, Tally
    from ._manifest import EnvSpec, Manifest
    from ._progress import Progress
    from ._results import CallResults

__all__ = ["DEFAULT_SHM_THRESHOLD", "Runner", "current_runner"]

T = TypeVar("T")

DEFAULT_SHM_THRESHOLD = 256 * 1024
_NO_OPTIONS = Options()

_arena_numbers = itertools.count(1)  # one arena per runner: their segment names differ


def current_runner() -> Runner:
    """The innermost ``with Runner(...)`` block's runner, else the default one.

    The default runner is made on first use from the discovered manifest
    (``ENVRUNNER_MANIFEST``, else ``environments.yaml`` here or in a parent folder) and shut
    down when the interpreter exits.
    """
    return _registry.current(Runner)


class Runner:
    """Owns the broker and the workers of one manifest's environments.

    Use it as a context manager to scope workers to a block (tasks called inside use it), or
    let the default runner serve tasks and shut down at exit.

    Args:
        manifest: A manifest path, a loaded :class:`Manifest`, or None to discover one.
        idle_timeout: Seconds an idle worker lives before it exits (None: until shutdown);
            an environment's ``idle_timeout:`` wins.
        start_timeout: Seconds a new worker has to come up.
        progress: Show build progress on stderr (None: a status line on a terminal, log lines
            otherwise; False: nothing), or an object with methods ``step(env, text)``,
            ``output(env, line)`` and ``done(env, text)`` that receives it; ``done`` also says
            why a cached call is recomputed.
        heartbeat_timeout: Seconds without a heartbeat from a worker (a thread of its own sends
            one every few seconds) after which it counts as hung and is killed; None: never.
        max_message_bytes: The largest frame of a message (its header, or one array's
            buffer) a worker or the broker accepts; a larger one is refused before it is read
            (arrays above ``shm_threshold`` do not count: they go through shared memory).
            Default 1 GiB.
        listen: Also accept workers from other machines on this address (``tcp://0.0.0.0:5555``);
            they are started there with ``envrunner worker``.
        keys: The keys folder (``envrunner keys DIR``): the session key that signs messages and
            the CurveZMQ keys that authenticate and encrypt the connection. Needed with
            ``listen``.
        insecure: Accept workers over tcp without CurveZMQ (anyone who can reach the port and
            has the session key gets in, and traffic is readable). Refused unless asked for.
        remote_envs: Environments whose workers all run on other machines: no local worker is
            started for them; their calls wait for one to join (up to ``start_timeout``). Only
            these accept workers from other machines.
        shm_threshold: Buffers (array contents) of at least this many bytes go through shared
            memory instead of socket frames; 0 turns shared memory off. Default:
            ``$ENVRUNNER_SHM_THRESHOLD``, else 256 KiB.
        records: Record every call for ``envrunner runs``: True, a database path, or None for
            the manifest's ``records:`` (docs/caching.md).

    Raises:
        ManifestError: The manifest is missing or invalid (every problem listed).
    """

    def __init__(
        self,
        manifest: str | os.PathLike[str] | Manifest | None = None,
        *,
        idle_timeout: float | None = 300.0,
        start_timeout: float = 60.0,
        progress: bool | Progress | None = None,
        heartbeat_timeout: float | None = 30.0,
        max_message_bytes: int = 1 << 30,
        listen: str | None = None,
        keys: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        remote_envs: Iterable[str] = (),
        shm_threshold: int | None = None,
        records: bool | str | os.PathLike[str] | None = None,
    ) -> None:
        from ._manifest import Manifest, find_manifest, load_manifest
        from ._runtime import shm

        if isinstance(manifest, Manifest):
            self.manifest = manifest
        else:
            self.manifest = load_manifest(find_manifest(manifest))
        self.idle_timeout = idle_timeout
        self.start_timeout = start_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.max_message_bytes = max_message_bytes
        self._envs = Environments(self.manifest, progress)
        self._cancel_builds = self._envs.cancel  # set at shutdown: builds stop
        self.listen = listen
        self.keys = Path(keys) if keys is not None else None
        self.insecure = insecure
        self.remote_envs = frozenset(remote_envs)
        for name in self.remote_envs:
            launch = self.manifest[name].launch  # an unknown name fails here, with a suggestion
            if not launch.local:
                raise EnvrunnerError(
                    f"environment {name!r} is in remote_envs, but its workers are started by "
                    f"launcher: {launch.kind} ({self.manifest[name].where('launcher')}): remove "
                    "it from remote_envs, or the launcher from the manifest"
                )
        self._session_key: bytes | None = None
        if listen is not None:
            self._session_key = check_listen(listen, self.keys, insecure)
        if shm_threshold is None:
            shm_threshold = int(os.environ.get("ENVRUNNER_SHM_THRESHOLD", DEFAULT_SHM_THRESHOLD))
        self.shm_threshold = shm_threshold if shm.available() else 0
        self._arena = (
            shm.Arena(f"envrunner-{os.getpid()}-{os.getpid()}.{next(_arena_numbers)}")
            if self.shm_threshold
            else None
        )
        self._mapper = shm.Mapper(self._release_block)
        self._lock = threading.RLock()
        self._closed = False
        self._broker: Broker | None = None
        self._ids = itertools.count(1)
        self._rundir: Path | None = None
        self._link = RunnerLink(self)
        self.records = records if records is not None else self.manifest.records
        self._results: CallResults | None = None  # the result cache and records, on first use
        self._tally: Tally | None = None  # calls counted for live views (live())
        _registry.register(self)
        if listen is not None:
            self._ensure_broker()  # workers on other machines may connect before any call

    # ------------------------------------------------------------------ public

    def call(self, env: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a worker of ``env``; return its result.

        On an idle worker the calling thread runs the call itself (fast); else it goes
        through the broker.
        """
        if self._tally is not None:  # a live view counts it: through the broker
            return self._submit(env, fn, args, kwargs).result()  # type: ignore[no-any-return]
        if self.records or getattr(fn, "__envrunner_options__", _NO_OPTIONS).cache:
            from ._cached import cached_call

            return cached_call(self, env, fn, args, kwargs)  # type: ignore[no-any-return]
        return self._run(self._ticket(env, fn, args, kwargs))  # type: ignore[no-any-return]

    def _run(self, ticket: Ticket) -> Any:  # on an idle worker in this thread, else the broker
        broker = self._ensure_broker()
        try:
            raw = broker.direct.run(ticket)
        except UndecodedError as failure:
            future = ticket.body.future
            assert isinstance(future, CallFuture)
            future.set_exception(failure)
            return future.result()
        except KeyboardInterrupt:
            self._interrupt()
            raise
        future = ticket.body.future
        assert isinstance(future, CallFuture)
        if raw is None:
            if not broker.submit(ticket):
                raise RunnerClosedError(f"{self!r} was shut down")
            return future.result()
        return future.decoded(raw)

    def submit(self, env: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Start ``fn(*args, **kwargs)`` in a worker of ``env``; return its future.

        Raises:
            RunnerClosedError: The runner was shut down.
            UnknownEnvironmentError: ``env`` is not in the manifest.
            EncodeError: ``fn`` or an argument cannot be sent (the message names which).
        """
        return self._submit(env, fn, args, kwargs)

    def map(
        self,
        env: str,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """``Executor.map`` in ``env``: every call submitted now, results in order.

        ``chunksize`` items travel per message; ``buffersize`` bounds the calls submitted ahead
        of the results read (Python 3.14's meaning), for huge or endless inputs.
        """
        return self.executor(env).map(  # the executor lives as long as the iterator
            fn, *iterables, timeout=timeout, chunksize=chunksize, buffersize=buffersize
        )

    def executor(
        self,
        env: str,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> EnvExecutor:
        """A ``concurrent.futures.Executor`` whose calls run in ``env`` (``EnvExecutor``)."""
        from ._executor import EnvExecutor

        self.manifest[env]  # an unknown name fails here, with a suggestion
        return EnvExecutor(self, env, initializer, initargs)

    async def acall(self, env: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``call`` for asyncio; cancelling the awaiting task cancels a call not yet started."""
        import asyncio

        return await asyncio.wrap_future(self.submit(env, fn, *args, **kwargs))

    def terminate(self) -> None:
        """Cancel queued calls, stop running ones (an error saying so), and shut down."""
        self.shutdown(wait=True, cancel_futures=True, kill=True)

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, kill: bool = False
    ) -> None:
        """Stop the workers and the broker; no process and no socket file stays behind.

        Args:
            wait: Block until running (and, unless cancelled, queued) calls have finished and
                every worker has exited.
            cancel_futures: Cancel the calls no worker has started; running calls finish.
            kill: Also stop running calls (their workers are killed; an error says so).
        """
        with self._lock:
            already = self._closed
            self._closed = True
            broker = self._broker
        if cancel_futures or kill:
            self._cancel_builds.set()
        if broker is not None and (not already or cancel_futures or kill):
            broker.shutdown(cancel_futures or kill, kill=kill)
        if broker is not None and wait:
            try:
                broker.closed.wait()
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting for anything
                broker.kill_all()
                broker.closed.wait(10)
                raise
            broker.join()
            if self._arena is not None:
                self._arena.close()
            self._mapper.close()
        if self._results is not None:
            self._results.close(wait)  # stores and records of the calls that ended are written

    def env_of(self, task: Any) -> str:
        """The environment a task runs in: its own, or the manifest's only one."""
        env: str | None = getattr(task, "__envrunner_options__", _NO_OPTIONS).env
        if env is not None:  # (every task call comes here: nothing more on this path)
            return env
        names = list(self.manifest.environments)
        if len(names) == 1:
            return names[0]
        from ._runtime.code import describe

        raise EnvrunnerError(
            f"task {describe(getattr(task, 'fn', task))} names no environment and "
            f"{self.manifest.path} declares {len(names)} ({', '.join(names)}): write "
            f'@envrunner.task(env="{names[0] if names else "NAME"}")'
        )

    def live(self, stream: TextIO | None = None, interval: float | None = None) -> LiveView:
        """``with runner.live():`` shows calls queued, running, done and failed per environment
        (on stderr: in place on a terminal, a line every 10 s in logs; docs/workflows.md)."""
        from ._live import LiveView, Tally, running_calls

        self._tally = self._tally or Tally()  # counts from the first view on
        return LiveView(self._tally, lambda: running_calls(self._broker), stream, interval)

    @property
    def remote_address(self) -> str:
        """Where workers on other machines connect ('' when not listening or not started)."""
        return self._broker.remote_address if self._broker else ""

    def __enter__(self) -> Runner:
        _registry.enter(self)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        _registry.leave(self)
        failed = exc_type is not None  # the block failed: stop what runs too
        self.shutdown(cancel_futures=failed, kill=failed)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._broker else "idle")
        counts = self._broker.snapshot() if self._broker else {"pools": 0, "workers": 0}
        return (
            f"<Runner manifest={str(self.manifest.path)!r} pools={counts['pools']} "
            f"workers={counts['workers']} {state}>"
        )

    def prepare(self, *envs: str) -> None:
        """Build (or find) environments now, before any call needs them (all by default).

        Raises:
            UnknownEnvironmentError: A name is not in the manifest.
            InterpreterNotFoundError: No interpreter matches an environment's ``python:``.
            BuildError: A build failed (the others named are still attempted first).
        """
        self._envs.build(list(envs) or list(self.manifest.environments), lambda: self._closed)

    def worker_pids(self, env: str | None = None) -> list[int]:
        """Pids of the live workers (of one environment, or all)."""
        return self._broker.worker_pids(env) if self._broker else []

    @property
    def rejected_messages(self) -> int:
        """Messages dropped unread (unsigned, wrongly signed, replayed, malformed), and
        connections to its sockets refused because a process it did not start made them."""
        return self._broker.rejected() if self._broker else 0

    @property
    def rundir(self) -> Path | None:
        """The private folder of this runner's sockets (None until the first call)."""
        return self._rundir

    # ------------------------------------------------------------------ internals

    def _interrupt(self) -> None:
        """Ctrl-C while waiting on a call: cancel what is queued, stop what runs, shut down."""
        self.shutdown(wait=False, cancel_futures=True, kill=True)

    def _submit(
        self,
        env: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        by_reference: bool = True,
        options: Options | None = None,
    ) -> Future[Any]:
        """``submit``, with the function by value when asked (tests), or other options."""
        opts: Options = options or getattr(fn, "__envrunner_options__", None) or Options()
        if self.records or opts.cache:
            from ._cached import cached_submit

            future = cached_submit(self, env, fn, args, kwargs, by_reference)
        else:
            ticket = self._ticket(env, fn, args, kwargs, by_reference, options)
            ticket.body.future.withdraw_with(weakref.ref(ticket))  # cancel() takes it back
            if not self._ensure_broker().submit(ticket):
                raise RunnerClosedError(f"{self!r} was shut down")
            future = ticket.body.future
        if self._tally is not None:
            self._tally.submitted(env, future)
        return future

    def _ticket(
        self,
        env: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        by_reference: bool = True,
        options: Options | None = None,
    ) -> Ticket:
        """Encode a call in the calling thread, ready for a worker."""
        if self._closed:
            raise RunnerClosedError(
                f"{self!r} was shut down; make a new Runner (or leave the with block later)"
            )
        spec = self.manifest[env]
        here = env not in self.remote_envs and spec.launch.local  # shared memory: one machine
        return make_ticket(
            fn,
            spec,
            args,
            kwargs,
            ids=self._ids,
            version=self._resolve(spec).interpreter.version,
            options=options or getattr(fn, "__envrunner_options__", None) or _NO_OPTIONS,
            by_reference=by_reference,
            arena=self._arena,
            threshold=self.shm_threshold if here else 0,
            max_message=self.max_message_bytes,
            link=self._link,
        )

    def _release_block(self, segment: str, offset: int) -> None:
        broker = self._broker
        if broker is not None and not self._closed:
            broker.release(segment, [[segment, offset]], [])

    def _resolve(self, spec: EnvSpec) -> Resolved:
        return self._envs.resolve(spec)

    def _progress(self) -> Progress:
        return self._envs.progress()

    def _ensure_broker(self) -> Broker:
        broker = self._broker
        if broker is not None:
            return broker
        with self._lock:
            if self._broker is None:
                if self._closed:
                    raise RunnerClosedError(f"{self!r} was shut down")
                self._broker, self._rundir = make_broker(
                    self.manifest,
                    remote_envs=self.remote_envs,
                    idle_timeout=self.idle_timeout,
                    start_timeout=self.start_timeout,
                    heartbeat_timeout=self.heartbeat_timeout,
                    prepare=self._envs.prepare,
                    runtime_root=self._envs.runtime_root,
                    arena=self._arena,
                    mapper=self._mapper,
                    shm_threshold=self.shm_threshold,
                    max_message=self.max_message_bytes,
                    session_key=self._session_key,
                    listen=self.listen,
                    keys=self.keys,
                    insecure=self.insecure,
                )
            return self._broker
