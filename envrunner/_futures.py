"""What a call gives back: a future whose value (or error) is decoded by whoever asks, and
``Ref``, a handle on an object a worker keeps.

::

    broker thread                           any thread
    ─────────────                           ──────────
    set_result(RawResult)  ─► CallFuture ─► result(): decode once (numpy arrays, pickles,
    set_exception(UndecodedError)               Ref handles), in this thread; the raw
    set_exception(WorkerCrashed, ...)          frames are dropped after
                                             exception(): the task's own exception, decoded

Neither reaches into the runner: they hold a :class:`Link`, the few things they need of it.

May import: the standard library, ``envrunner._calls``, ``envrunner._output``,
``envrunner._runtime``.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import PENDING
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._calls import RawResult, SameAs, UndecodedError, decode_error
from ._output import WRITER
from ._runtime.errors import DecodeError, DependencyError, ReferenceLostError

if TYPE_CHECKING:
    from ._runtime.shm import Mapper

__all__ = ["CallFuture", "Link", "Ref"]

#: Seconds a value waits for its task's output to be written (a stream nobody reads).
OUTPUT_WAIT = 5.0

T = TypeVar("T")

_UNSET: Any = object()


def _nothing() -> None:
    return None


class Link(Protocol):
    """What futures and refs need of their runner."""

    @property
    def mapper(self) -> Mapper | None: ...
    def interrupt(self) -> None: ...
    def release_ref(self, worker: bytes, ident: int) -> None: ...
    def withdraw(self, ticket: Any) -> None: ...
    def fetch(self, ref: Ref) -> Future[Any]: ...
    def input_done(self, ticket: Any, failed: Any) -> None: ...


class _Condition(threading.Condition):
    """A future's condition: ``threading.Condition`` with its lock's methods found on the
    class, not bound once per instance. A pending call holds one: five fewer objects each for
    the garbage collector to walk (a workflow keeps 100,000 pending calls)."""

    def __init__(self) -> None:  # (not Condition's own: it binds the five methods)
        self._lock = threading.RLock()
        # Condition's deque is 760 bytes: no list until a thread waits (``wait`` holds the
        # lock), then a list; both take the few operations Condition asks of them (append,
        # remove, [0], len, islice) on every Python we run on.
        self._waiters: list[Any] | tuple[()] = ()

    def wait(self, timeout: float | None = None) -> bool:
        if type(self._waiters) is tuple:
            self._waiters = []
        return super().wait(timeout)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> Any:
        return self._lock._release_save()  # type: ignore[attr-defined]

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]

    def _is_owned(self) -> bool:
        return self._lock._is_owned()  # type: ignore[attr-defined,no-any-return]


_DECODE_LOCKS = threading.Lock()


class CallFuture(Future[T]):
    """A ``concurrent.futures.Future`` for one call; its value is decoded when first asked for.

    Decoding in the thread that asks keeps large results and user modules' pickles off the
    broker's thread, and lets a result that cannot be loaded here fail only the code that
    wanted it. A task's error is decoded the same way.
    """

    def __init__(self, env: str, name: str, link: Link | None = None) -> None:
        # Future.__init__'s own state (a test checks it is all of it), with a lighter condition
        self._condition = _Condition()
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[Future[T]], object]] = []
        self.env = env
        self.name = name
        self._link = link
        self._decode_lock: threading.Lock | None = None  # made when first needed
        self._value: Any = _UNSET
        self._decode_error: BaseException | None = None
        self._ticket: Callable[[], Any] = _nothing
        #: The cache key of the call (with ``cache=True``): a call given this future is keyed
        #: by it, not by its value (``_digest``).
        self.envrunner_key: str | None = None

    def withdraw_with(self, ticket: Callable[[], Any]) -> None:
        """Let :meth:`cancel` take the call back from the broker: ``ticket()`` gives its ticket
        while the scheduler holds it (a weak reference: the future keeps no call alive)."""
        self._ticket = ticket

    def cancel(self) -> bool:
        """Cancel the call if no worker has it yet (then it never runs); False if it does."""
        if not super().cancel():
            return False
        ticket, self._ticket = self._ticket(), _nothing
        if ticket is not None and self._link is not None:
            self._link.withdraw(ticket)
        return True

    def result(self, timeout: float | None = None) -> T:
        try:
            raw = super().result(timeout)
        except UndecodedError as failure:
            error = self._error(failure)
            del self, failure
            try:
                raise error from error.__cause__
            finally:
                del error  # no cycle error -> traceback -> this frame -> error
        except KeyboardInterrupt:
            if self._link is not None:
                self._link.interrupt()
            raise
        except DependencyError as failure:
            _find_cause(failure)
            del self, failure
            raise
        except BaseException:
            del self  # no cycle future -> error -> this frame -> future: frees what it held
            raise
        value: T = self.decoded(raw)
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        error = super().exception(timeout)
        if isinstance(error, UndecodedError):
            return self._error(error)
        if isinstance(error, DependencyError):
            _find_cause(error)
        if error is not None:
            return error
        try:
            self.decoded(super().result(0))
        except BaseException as exc:
            return exc
        return None

    def _error(self, failure: UndecodedError) -> BaseException:
        """The task's own exception, decoded once, in place of the stand-in."""
        WRITER.wait(failure.fence, OUTPUT_WAIT)  # the task's output first
        with self._decoding(), self._condition:
            if self._exception is failure:
                self._exception = decode_error(failure)
            return self._exception  # type: ignore[return-value]

    def decoded(self, raw: Any) -> Any:
        """The value of ``raw`` (an answer from a worker), decoded once; other values as is."""
        from ._runtime.codec import Decoder

        if isinstance(raw, SameAs):  # merged into an identical call: its value, decoded once
            return raw.ticket.body.future.result()
        if not isinstance(raw, RawResult):
            return self._value if raw is _UNSET else raw
        WRITER.wait(raw.fence, OUTPUT_WAIT)  # the task's output first (never for long)
        with self._decoding():
            if self._value is _UNSET and self._decode_error is None:
                link = self._link
                decoder = Decoder(
                    where="the caller",
                    mapper=link.mapper if link else None,
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

    def _decoding(self) -> threading.Lock:
        """The lock that lets one thread decode the value (or error) once."""
        lock = self._decode_lock
        if lock is None:
            with _DECODE_LOCKS:
                lock = self._decode_lock
                if lock is None:
                    lock = self._decode_lock = threading.Lock()
        return lock

    def _make_ref(self, raw: RawResult, ident: int, type_name: str, text: str) -> Ref:
        assert self._link is not None
        return Ref(self._link, self.env, raw.worker, raw.pid, ident, type_name, text)

    def __repr__(self) -> str:
        state = self._state.lower()
        return f"<CallFuture {self.name} env={self.env!r} {state}>"


def _find_cause(failure: DependencyError) -> None:
    """The failed ancestor's own error as the cause (decoded in the thread that asks)."""
    ancestor = failure.failed
    if failure.__cause__ is None and isinstance(ancestor, Future):
        try:
            failure.__cause__ = ancestor.exception(0)
        except BaseException:  # (cancelled, or it cannot be read: the message says what it was)
            pass


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
        link: Link,
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
        self.worker = worker
        self._link = link
        self._ident = ident
        self._released = weakref.finalize(self, link.release_ref, worker, ident)

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
        return self._link.fetch(self).result(timeout)

    def release(self) -> None:
        """Let the worker drop the object now (dropping the last handle does the same)."""
        self._released()

    def __repr__(self) -> str:
        state = "" if self._released.alive else " released"
        return (
            f"<Ref {self.type_name} in {self.env!r} (worker pid {self.worker_pid}){state}: "
            f"{self.text}>"
        )
