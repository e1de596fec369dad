"""What users write: ``@task``, ``call``, ``Runner`` and the futures they get back.

May import: the standard library, and every caller-side ``envrunner`` module below it.
Importing this module is cheap: the broker (and zmq) load when the first call is submitted.
"""

from __future__ import annotations

import atexit
import enum
import functools
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, overload

from ._runtime import current_environment
from ._runtime.errors import (
    DecodeError,
    EncodeError,
    EnvrunnerError,
    ReferenceLostError,
    RunnerClosedError,
)

if TYPE_CHECKING:
    from ._broker import Broker
    from ._calls import PendingCall, Prepared
    from ._environments import Resolved
    from ._manifest import EnvSpec, Manifest
    from ._progress import Progress
    from ._runtime.codec import Encoder

__all__ = [
    "CallFuture",
    "Ref",
    "Runner",
    "Task",
    "call",
    "current_environment",
    "current_runner",
    "task",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_UNSET: Any = object()
DEFAULT_SHM_THRESHOLD = 256 * 1024


class CallFuture(Future[T]):
    """A ``concurrent.futures.Future`` for one call; its value is decoded when first asked for.

    Decoding in the thread that asks keeps large results off the broker's thread, and lets a
    result that cannot be loaded here fail only the code that wanted it.
    """

    def __init__(self, env: str, name: str, runner: Runner | None = None) -> None:
        super().__init__()
        self.env = env
        self.name = name
        self._runner = runner
        self._decode_lock = threading.Lock()
        self._value: Any = _UNSET
        self._decode_error: BaseException | None = None

    def result(self, timeout: float | None = None) -> T:
        try:
            raw = super().result(timeout)
        except KeyboardInterrupt:
            if self._runner is not None:
                self._runner._interrupt()
            raise
        except BaseException:
            del self  # no cycle future -> error -> this frame -> future: frees what it held
            raise
        value: T = self._decoded(raw)
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        error = super().exception(timeout)
        if error is not None:
            return error
        try:
            self._decoded(super().result(0))
        except BaseException as exc:
            return exc
        return None

    def _decoded(self, raw: Any) -> Any:
        from ._calls import RawResult
        from ._runtime.codec import Decoder

        if not isinstance(raw, RawResult):
            return self._value if raw is _UNSET else raw
        with self._decode_lock:
            if self._value is _UNSET and self._decode_error is None:
                runner = self._runner
                decoder = Decoder(
                    where="the caller",
                    mapper=runner._mapper if runner else None,
                    make_ref=functools.partial(self._make_ref, raw),
                )
                try:
                    self._value = decoder.decode(raw.payload, raw.buffers)
                except DecodeError as exc:
                    module = exc.module
                    fix = f"Install {module} where you call from, or r" if module else "R"
                    self._decode_error = DecodeError(
                        f"cannot load the result of {self.name} from environment {self.env!r}: "
                        f"{exc}. {fix}eturn plain data instead (lists, dicts, numbers; "
                        "array.tolist(), tensor.numpy())",
                        module=module,
                        env=self.env,
                    )
                with self._condition:
                    self._result = _UNSET  # the raw frames are no longer needed
        error = self._decode_error
        if error is not None:
            del self
            raise error
        return self._value

    def _make_ref(self, raw: Any, ident: int, type_name: str, text: str) -> Ref:
        assert self._runner is not None
        return Ref(self._runner, self.env, raw.worker, raw.pid, ident, type_name, text)

    def __repr__(self) -> str:
        state = self._state.lower()
        return f"<CallFuture {self.name} env={self.env!r} {state}>"


class Ref:
    """A result kept in its worker (``keep=True``): a handle, not the value.

    Pass it to another call in the same environment and that call uses the object in place,
    with no transfer (it runs on the worker that keeps it). :meth:`fetch` brings the value
    over. The worker lets go of the object when the last handle is dropped or released.

    Attributes:
        env: The environment whose worker keeps the object.
        type_name: The object's type, such as ``torch.nn.modules.linear.Linear``.
        text: The start of the object's ``repr`` in the worker.
    """

    def __init__(
        self,
        runner: Runner,
        env: str,
        worker: bytes,
        pid: int,
        ident: int,
        type_name: str,
        text: str,
    ) -> None:
        self.env = env
        self.type_name = type_name
        self.text = text
        self.worker_pid = pid
        self._runner = runner
        self._worker = worker
        self._ident = ident
        self._released = weakref.finalize(self, runner._release_ref, worker, ident)

    @property
    def __envrunner_ref__(self) -> int:
        if not self._released.alive:
            raise ReferenceLostError(self.env, f"the {self.type_name}", "it was released")
        return self._ident

    def fetch(self, timeout: float | None = None) -> Any:
        """Bring the kept object over to the caller (it stays kept in the worker too).

        Raises:
            ReferenceLostError: Its worker has exited.
        """
        from ._runtime import value_of

        return self._runner._submit(self.env, value_of, (self,), {}, None).result(timeout)

    def release(self) -> None:
        """Let the worker drop the object now (dropping the last handle does the same)."""
        self._released()

    def __repr__(self) -> str:
        state = "" if self._released.alive else " released"
        return (
            f"<Ref {self.type_name} in {self.env!r} (worker pid {self.worker_pid}){state}: "
            f"{self.text}>"
        )


class _Same(enum.Enum):
    """The default of :meth:`Task.options` for an option whose None means something."""

    SAME = "as before"

    def __repr__(self) -> str:
        return "<as before>"


class Task(Generic[P, R]):
    """A function pinned to an environment: calling it runs it in a worker of that environment.

    Made by :func:`task`; behaves like the function (name, docstring, signature) and adds
    :meth:`submit` and :meth:`map`.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        env: str | None = None,
        timeout: float | None = None,
        keep: bool = False,
        retries: int = 0,
    ) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.env = env
        self.timeout = timeout
        self.keep = keep
        self.retries = retries
        self.__envrunner_fn__ = fn
        # (encoding, name) by (same Python, by reference)
        self._code: dict[tuple[bool, bool], tuple[bytes, str]] = {}
        self._takes_keep = "keep" in _parameter_names(fn, keyword=True)

    def options(
        self,
        *,
        env: str | None = None,
        timeout: float | Literal[_Same.SAME] | None = _Same.SAME,
        keep: bool | None = None,
        retries: int | None = None,
    ) -> Task[P, R]:
        """The same task with other options (those not given stay as they are).

        ``task.options(keep=True)(x)`` keeps the result in the worker and returns a :class:`Ref`;
        ``task.options(timeout=None)`` drops the task's own timeout, back to the environment's
        (its manifest ``timeout:``, else none).
        """
        other: Task[P, R] = Task(
            self.fn,
            env=self.env if env is None else env,
            timeout=self.timeout if timeout is _Same.SAME else timeout,
            keep=self.keep if keep is None else keep,
            retries=self.retries if retries is None else retries,
        )
        other._code = self._code
        return other

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in its environment and return its result (or raise its error)."""
        runner = current_runner()
        value: R = runner._call(
            self._env_in(runner), self, args, kwargs, self.timeout, self.keep, self.retries
        )
        return value

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Start the call and return a ``concurrent.futures.Future`` for its result.

        Raises:
            EncodeError: An argument cannot be sent (the message names it).
            UnknownEnvironmentError: The task's environment is not in the manifest.
        """
        keep = self.keep
        if "keep" in kwargs and not self._takes_keep:  # .submit(..., keep=True)
            keep = bool(kwargs.pop("keep"))
        runner = current_runner()
        env = self._env_in(runner)
        return runner._submit(
            env, self, args, kwargs, self.timeout, keep=keep, retries=self.retries
        )

    def map(self, *iterables: Iterable[Any], timeout: float | None = None) -> Iterator[R]:
        """Like ``Executor.map``: results in order, up to the environment's ``workers`` at once.

        Args:
            *iterables: Argument iterables, zipped.
            timeout: Seconds from this call until every result must be in.
        """
        runner = current_runner()
        return runner.map(self._env_in(runner), self, *iterables, timeout=timeout)

    def _env_in(self, runner: Runner) -> str:
        from ._runtime.code import describe

        if self.env is not None:
            return self.env
        names = list(runner.manifest.environments)
        if len(names) == 1:
            return names[0]
        raise EnvrunnerError(
            f"task {describe(self.fn)} names no environment and {runner.manifest.path} "
            f"declares {len(names)} ({', '.join(names)}): write "
            f'@envrunner.task(env="{names[0] if names else "NAME"}")'
        )

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        return f"<Task {name} env={self.env!r}>"


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    env: str | None = None,
    timeout: float | None = None,
    keep: bool = False,
    retries: int = 0,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    env: str | None = None,
    timeout: float | None = None,
    keep: bool = False,
    retries: int = 0,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Pin a function to an environment of the manifest.

    Works bare (``@task``, when the manifest declares a single environment) and with options::

        @envrunner.task(env="torch", timeout=600)
        def train(x): ...

    Args:
        fn: The function (when used bare).
        env: The environment's name in the manifest.
        timeout: Seconds a call may run before its worker is killed and it fails with
            ``TaskTimeoutError``; default: the environment's ``timeout:``, else none.
        keep: Keep each result in the worker and return a :class:`Ref` to it instead (also
            per call: ``task.submit(..., keep=True)`` or ``task.options(keep=True)``).
        retries: Run a call again this many times if its worker dies under it (a crash, the
            OOM killer); never after an exception the function raised, nor after a timeout.

    Returns:
        A :class:`Task`.
    """

    def decorate(function: Callable[P, R]) -> Task[P, R]:
        return Task(function, env=env, timeout=timeout, keep=keep, retries=retries)

    return decorate(fn) if fn is not None else decorate


def call(env: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a worker of ``env`` and return its result.

    Raises:
        Whatever ``fn`` raised (its remote traceback attached as ``__cause__``), or an
        ``EnvrunnerError`` that says what went wrong around it.
    """
    return current_runner().call(env, fn, *args, **kwargs)


# --------------------------------------------------------------------------- the runner

_runners: weakref.WeakSet[Runner] = weakref.WeakSet()
#: Encoded functions given to Runner.call/submit without a task, by function (weakly).
_codes: weakref.WeakKeyDictionary[Any, dict[tuple[bool, bool], tuple[bytes, str]]] = (
    weakref.WeakKeyDictionary()
)
_arena_numbers = itertools.count(1)  # one arena per runner: their segment names differ
_active: list[Runner] = []
_default: Runner | None = None
_global_lock = threading.RLock()


def current_runner() -> Runner:
    """The innermost ``with Runner(...)`` block's runner, else the default one.

    The default runner is made on first use from the discovered manifest
    (``ENVRUNNER_MANIFEST``, else ``environments.yaml`` here or in a parent folder) and shut
    down when the interpreter exits.
    """
    global _default
    with _global_lock:
        if _active:
            return _active[-1]
        if _default is None or _default._closed:
            _default = Runner()
        return _default


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
            ``output(env, line)`` and ``done(env, text)`` that receives it.
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
        self._progress_setting = progress
        self._cancel_builds = threading.Event()  # set at shutdown: builds of prepare() stop
        self.listen = listen
        self.keys = Path(keys) if keys is not None else None
        self.insecure = insecure
        self.remote_envs = frozenset(remote_envs)
        for name in self.remote_envs:
            self.manifest[name]  # an unknown name fails here, with a suggestion
        self._session_key: bytes | None = None
        if listen is not None:
            self._session_key = self._check_listen(listen)
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
        self._resolved: dict[str, Resolved] = {}
        self._ids = itertools.count(1)
        self._runtime: Path | None = None
        self._rundir: Path | None = None
        _runners.add(self)
        if listen is not None:
            self._ensure_broker()  # workers on other machines may connect before any call

    # ------------------------------------------------------------------ public

    def call(self, env: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a worker of ``env``; return its result."""
        if isinstance(fn, Task):
            value: T = self._call(env, fn, args, kwargs, fn.timeout, fn.keep, fn.retries)
            return value
        return self._call(env, fn, args, kwargs, None)  # type: ignore[no-any-return]

    def submit(self, env: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Start ``fn(*args, **kwargs)`` in a worker of ``env``; return its future.

        Raises:
            RunnerClosedError: The runner was shut down.
            UnknownEnvironmentError: ``env`` is not in the manifest.
            EncodeError: ``fn`` or an argument cannot be sent (the message names which).
        """
        if isinstance(fn, Task):
            return self._submit(env, fn, args, kwargs, fn.timeout, keep=fn.keep, retries=fn.retries)
        return self._submit(env, fn, args, kwargs, None)

    def map(
        self,
        env: str,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        timeout: float | None = None,
    ) -> Iterator[T]:
        """Run ``fn`` over zipped ``iterables`` in ``env``; yield results in order.

        Up to twice the environment's ``workers`` calls are in flight at once, so the workers
        never wait and a long iterable is never submitted all at once.
        """
        spec = self.manifest[env]
        window = max(2, 2 * spec.workers)
        end = None if timeout is None else time.monotonic() + timeout
        arguments = zip(*iterables)  # noqa: B905 - like map(): the shortest wins
        futures: deque[Future[T]] = deque()

        def fill() -> None:
            while len(futures) < window:
                try:
                    args = next(arguments)
                except StopIteration:
                    return
                futures.append(self.submit(env, fn, *args))

        fill()

        def results() -> Iterator[T]:
            try:
                while futures:
                    future = futures.popleft()
                    remaining = None if end is None else max(0.0, end - time.monotonic())
                    value = future.result(remaining)
                    fill()
                    yield value
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers and the broker; no process and no socket file stays behind.

        Args:
            wait: Block until running (and, unless cancelled, queued) calls have finished and
                every worker has exited.
            cancel_futures: Cancel queued calls and stop running ones (their futures raise
                ``CancelledError``).
        """
        with self._lock:
            already = self._closed
            self._closed = True
            broker = self._broker
        if cancel_futures:
            self._cancel_builds.set()
        if broker is None:
            return
        if not already or cancel_futures:
            broker.shutdown(cancel_futures)
        if wait:
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

    def _check_listen(self, listen: str) -> bytes:
        """Refuse an unsafe way to accept remote workers; return the session key."""
        import warnings

        from ._keys import read_session_key

        if self.keys is None:
            raise EnvrunnerError(
                f"Runner(listen={listen!r}) needs keys=DIR: create them with envrunner keys DIR "
                "--client NAME, and copy broker.key, session.key and NAME.key_secret to the "
                "worker's machine"
            )
        if not (self.keys / "broker.key_secret").exists() and not self.insecure:
            raise EnvrunnerError(
                f"refusing to listen on {listen} without CurveZMQ keys: {self.keys} has no "
                "broker.key_secret (run envrunner keys on it), or pass insecure=True to accept "
                "unencrypted, unauthenticated connections"
            )
        if self.insecure:
            warnings.warn(
                f"envrunner listens on {listen} without CurveZMQ: traffic is readable and anyone "
                "holding the session key can connect",
                RuntimeWarning,
                stacklevel=3,
            )
        return read_session_key(self.keys / "session.key")

    @property
    def remote_address(self) -> str:
        """Where workers on other machines connect ('' when not listening or not started)."""
        return self._broker.remote_address if self._broker else ""

    def _interrupt(self) -> None:
        """Ctrl-C while waiting on a call: cancel what is queued, stop what runs, shut down."""
        self.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Runner:
        with _global_lock:
            _active.append(self)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        with _global_lock:
            if self in _active:
                _active.remove(self)
        self.shutdown(wait=True, cancel_futures=exc_type is not None)

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
        names = list(envs) or list(self.manifest.environments)
        specs = [self.manifest[name] for name in names]
        failure: BaseException | None = None
        for spec in specs:
            if self._closed:
                raise RunnerClosedError(f"{self!r} was shut down")
            try:
                self._build(spec, self._cancel_builds)
            except EnvrunnerError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def worker_pids(self, env: str | None = None) -> list[int]:
        """Pids of the live workers (of one environment, or all)."""
        return self._broker.worker_pids(env) if self._broker else []

    @property
    def rejected_messages(self) -> int:
        """Messages dropped unread: unsigned, wrongly signed, replayed, malformed."""
        return self._broker.rejected() if self._broker else 0

    @property
    def rundir(self) -> Path | None:
        """The private folder of this runner's sockets (None until the first call)."""
        return self._rundir

    # ------------------------------------------------------------------ internals

    def _call(
        self,
        env: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        keep: bool = False,
        retries: int = 0,
    ) -> Any:
        """A synchronous call: on an idle worker this thread checks out when it can (fast),
        else through the broker."""
        pending = self._pending(env, fn, args, kwargs, timeout, True, keep, retries)
        broker = self._ensure_broker()
        worker = broker.checkout(env, pending.pin)
        if worker is None:
            broker.submit(pending)
            return pending.future.result()
        try:
            raw = broker.run_direct(worker, pending)
        except KeyboardInterrupt:
            self._interrupt()
            raise
        future = pending.future
        assert isinstance(future, CallFuture)
        return future._decoded(raw)

    def _submit(
        self,
        env: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        by_reference: bool = True,
        keep: bool = False,
        retries: int = 0,
    ) -> Future[Any]:
        pending = self._pending(env, fn, args, kwargs, timeout, by_reference, keep, retries)
        self._ensure_broker().submit(pending)
        return pending.future

    def _pending(
        self,
        env: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        by_reference: bool,
        keep: bool,
        retries: int,
    ) -> PendingCall:
        """Encode a call in the calling thread, ready for a worker."""
        from ._calls import PendingCall

        if self._closed:
            raise RunnerClosedError(
                f"{self!r} was shut down; make a new Runner (or leave the with block later)"
            )
        spec = self.manifest[env]
        version = self._resolve(spec).interpreter.version
        same = version[:2] == tuple(sys.version_info[:2])
        code, name = self._code(fn, same, env, version, by_reference)
        local = env not in self.remote_envs  # no shared memory across machines
        body, frames, encoder = self._encode_arguments(fn, name, env, args, kwargs, same, local)
        try:
            pin, pinned_what = self._pin(encoder.refs, env, name)
            future: CallFuture[Any] = CallFuture(env, name, self)
            pending = PendingCall(
                call_id=next(self._ids),
                env=env,
                name=name,
                code=code,
                payload=body,
                buffers=frames,
                timeout=timeout if timeout is not None else spec.timeout,
                future=future,
                segments=list(encoder.segments),
                blocks=list(encoder.blocks),
                keep=keep,
                pin=pin,
                pinned_what=pinned_what,
                retries=retries,
            )
        except BaseException:
            encoder.release()
            raise
        return pending

    @staticmethod
    def _pin(refs: list[Any], env: str, name: str) -> tuple[bytes | None, str]:
        """The worker a call must run on: the one keeping the objects its arguments refer to."""
        if not refs:
            return None, ""
        for ref in refs:
            if ref.env != env:
                raise EncodeError(
                    f"{name} in environment {env!r} was given {ref!r}, an object kept in "
                    f"environment {ref.env!r}: a reference works only in its own environment. "
                    "Pass ref.fetch() to send the value instead"
                )
        workers = {ref._worker for ref in refs}
        if len(workers) > 1:
            raise EncodeError(
                f"{name} was given references kept by {len(workers)} different workers of "
                f"environment {env!r}; a call runs on one worker: fetch() all but one of them"
            )
        return workers.pop(), repr(refs[0])

    def _release_ref(self, worker: bytes, ident: int) -> None:
        broker = self._broker
        if broker is not None and not self._closed:
            broker.release(worker, [], [ident])

    def _release_block(self, segment: str, offset: int) -> None:
        broker = self._broker
        if broker is not None and not self._closed:
            broker.release(segment, [[segment, offset]], [])

    def _code(
        self,
        fn: Callable[..., Any],
        same: bool,
        env: str,
        version: tuple[int, ...],
        by_reference: bool,
    ) -> tuple[bytes, str]:
        """A function's encoding for a worker, and its name for messages (cached per function)."""
        if isinstance(fn, Task):
            cache = fn._code
        else:
            try:
                cache = _codes.setdefault(fn, {})
            except TypeError:  # not weak-referenceable (a builtin method, say): no cache
                cache = {}
        found = cache.get((same, by_reference))
        if found is not None:
            return found
        from ._runtime.code import describe, encode_function

        target = f"environment {env!r} (Python {'.'.join(map(str, version[:2]))})"
        found = (encode_function(fn, same, target, by_reference), describe(fn) + "()")
        cache[same, by_reference] = found
        return found

    def _encode_arguments(
        self,
        fn: Callable[..., Any],
        name: str,
        env: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        same: bool,
        shared_memory: bool = True,
    ) -> tuple[bytes, list[Any], Encoder]:
        """Encode a call's arguments: body, frames, and the encoder (its blocks and refs)."""
        from ._runtime.codec import Encoder, type_name

        threshold = self.shm_threshold if shared_memory else 0
        encoder = Encoder(by_value=same, arena=self._arena, threshold=threshold)
        try:
            body, frames = encoder.encode([list(args), kwargs])
            return body, frames, encoder
        except EncodeError as exc:
            first = exc
        parameters = _parameter_names(fn)
        labelled: list[tuple[str, Any]] = []
        for index, value in enumerate(args):
            label = f"argument {index + 1}"
            if index < len(parameters):
                label += f" ({parameters[index]})"
            labelled.append((label, value))
        labelled += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
        for label, value in labelled:
            try:
                Encoder(by_value=same).encode(value)
            except EncodeError as exc:
                raise EncodeError(
                    f"{label} of {name}, a {type_name(value)}, cannot be sent to environment "
                    f"{env!r}: {exc}",
                    what=label,
                ) from exc
        raise EncodeError(
            f"the arguments of {name} cannot be sent to environment {env!r}: {first}"
        ) from first

    def _resolve(self, spec: EnvSpec) -> Resolved:
        resolved = self._resolved.get(spec.name)
        if resolved is None:
            from ._environments import resolve

            with self._lock:
                resolved = self._resolved.get(spec.name)
                if resolved is None:
                    resolved = resolve(spec)
                    self._resolved[spec.name] = resolved
        return resolved

    def _progress(self) -> Progress:
        from ._progress import auto_progress

        setting = self._progress_setting
        if setting is None or isinstance(setting, bool):
            return auto_progress(setting)
        return setting

    def _prepare(self, env: str, cancel: threading.Event) -> Prepared:
        """Build (or find) ``env`` and say how to start its workers; runs in its own thread."""
        from ._calls import Prepared
        from ._process import compile_runtime

        spec = self.manifest[env]
        resolved, append = self._build(spec, cancel)
        interpreter = resolved.interpreter
        if resolved.key is None:
            virtual_env = Path(interpreter.prefix) if interpreter.is_venv else None
        else:
            virtual_env = resolved.path
        compile_runtime(self._runtime_root(), resolved.python, interpreter.cache_tag)
        return Prepared(
            name=env,
            python=resolved.python,
            version=interpreter.version,
            bin_dir=resolved.bin_dir,
            virtual_env=virtual_env,
            append_paths=append,
            environ=dict(spec.env),
        )

    def _build(self, spec: EnvSpec, cancel: threading.Event) -> tuple[Resolved, tuple[str, ...]]:
        """Build ``spec`` (or find it built); returns it and the folders workers append."""
        from ._environments import build, overlay

        resolved = self._resolve(spec)
        if resolved.key is None:
            return resolved, (str(overlay(resolved.interpreter, self._progress())),)
        build(resolved, progress=self._progress(), cancel=cancel, manifest_path=self.manifest.path)
        return resolved, ()

    def _runtime_root(self, _prepared: Any = None) -> Path:
        if self._runtime is None:
            from ._process import runtime_root

            self._runtime = runtime_root()
        return self._runtime

    def _ensure_broker(self) -> Broker:
        broker = self._broker
        if broker is not None:
            return broker
        with self._lock:
            if self._broker is None:
                if self._closed:
                    raise RunnerClosedError(f"{self!r} was shut down")
                from ._broker import Broker
                from ._process import caller_project_paths

                self._runtime_root()
                self._rundir = _make_rundir()
                from ._calls import PoolConfig

                pools = {
                    spec.name: PoolConfig(
                        workers=spec.workers,
                        idle_timeout=(
                            spec.idle_timeout
                            if spec.idle_timeout is not None
                            else self.idle_timeout
                        ),
                        max_calls=spec.max_calls,
                        local=spec.name not in self.remote_envs,
                        window=PoolConfig.window_for(spec.workers),
                    )
                    for spec in self.manifest
                }
                from ._runtime.shm import remove_stale

                remove_stale()
                broker = Broker(
                    pools,
                    self._prepare,
                    self._runtime_root,
                    caller_project_paths(),
                    start_timeout=self.start_timeout,
                    heartbeat_timeout=self.heartbeat_timeout,
                    rundir=self._rundir,
                    arena=self._arena,
                    mapper=self._mapper,
                    shm_threshold=self.shm_threshold,
                    max_message=self.max_message_bytes,
                    key=self._session_key,
                    listen=self.listen,
                    keys=None if self.insecure else self.keys,
                )
                broker.start()
                self._broker = broker
            return self._broker


def _parameter_names(fn: Callable[..., Any], keyword: bool = False) -> list[str]:
    import inspect

    try:
        signature = inspect.signature(getattr(fn, "__envrunner_fn__", fn))
    except (TypeError, ValueError):
        return []
    kinds: set[inspect._ParameterKind] = {
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    }
    if keyword:
        kinds.add(inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in signature.parameters.values() if p.kind in kinds]


_RUNDIR_PREFIX = "envrunner-"


def _make_rundir() -> Path:
    """A private (0700) folder for this runner's sockets; stale ones of dead runners go first.

    It is made in ``$ENVRUNNER_RUNDIR`` or the temporary folder, which must not let other users
    replace what is in it: writable by others only with the sticky bit (as /tmp is).

    Raises:
        EnvrunnerError: The folder is unsafe, or the new one did not come out private.
    """
    import stat

    base = Path(os.environ.get("ENVRUNNER_RUNDIR") or tempfile.gettempdir())
    info = base.stat()
    open_to_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if open_to_others and not info.st_mode & stat.S_ISVTX:
        raise EnvrunnerError(
            f"refusing to put the runner's sockets in {base}: other users can write there "
            f"(mode {stat.filemode(info.st_mode)}, no sticky bit) and could replace them. Set "
            "ENVRUNNER_RUNDIR (or TMPDIR) to a folder only you can write, or chmod o-w,g-w it"
        )
    _remove_stale_rundirs(base)
    path = Path(tempfile.mkdtemp(prefix=f"{_RUNDIR_PREFIX}{os.getpid()}-", dir=base))
    os.chmod(path, 0o700)
    made = path.stat()
    if made.st_uid != os.getuid() or made.st_mode & 0o077:
        raise EnvrunnerError(f"{path} is not private to this user; refusing to use it")
    return path


def _remove_stale_rundirs(base: Path) -> None:
    try:
        entries = list(base.glob(f"{_RUNDIR_PREFIX}*-*"))
    except OSError:
        return
    for entry in entries:
        pid_text = entry.name[len(_RUNDIR_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


@atexit.register
def _shutdown_all() -> None:
    """At exit: wait for running calls, unless the program is dying of an error or Ctrl-C."""
    failing = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    for runner in list(_runners):
        try:
            runner.shutdown(wait=True, cancel_futures=failing is not None)
        except (Exception, KeyboardInterrupt):
            pass


def _forget_after_fork() -> None:
    """A forked child has no broker thread: it must not use its parent's runners."""
    global _default
    _default = None
    _active.clear()
    for runner in list(_runners):
        runner._closed = True
        runner._broker = None


os.register_at_fork(after_in_child=_forget_after_fork)
