"""``EnvExecutor``: a ``concurrent.futures.Executor`` whose calls run in one environment.

::

    runner.executor("torch", initializer=setup)
      submit(fn, *a)  ─► runner._submit(env, fn, a)                       a CallFuture
                      └► with an initializer: run_with_init(key, setup, initargs, fn, a)
                         (``_runtime.batch``), so each worker runs setup once for this executor
      map(fn, xs, timeout=, chunksize=, buffersize=)  ─► ``_mapping.map_calls`` over submit
      shutdown(wait, cancel_futures)  ─► its own pending futures cancelled / waited for

The executor is a view of the runner: it starts no workers of its own, and shutting it down
ends its calls, not the runner (whose workers other code may share).

May import: the standard library, ``envrunner._encode``, ``_mapping``, ``_runtime``.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures import wait as wait_for
from typing import Any, Protocol, TypeVar

__all__ = ["EnvExecutor", "code_of"]

T = TypeVar("T")


class _Runner(Protocol):
    """What an executor needs of its runner (``_runner.Runner``)."""

    manifest: Any

    def _submit(
        self,
        env: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        by_reference: bool = True,
        options: Any = None,
    ) -> Future[Any]: ...

    def _resolve(self, spec: Any) -> Any: ...


def code_of(runner: _Runner, env: str, fn: Callable[..., Any]) -> bytes:
    """``fn`` encoded for a worker of ``env``, to travel as an argument of a runtime helper."""
    from ._encode import encode_function

    version = runner._resolve(runner.manifest[env]).interpreter.version
    same = version[:2] == tuple(sys.version_info[:2])
    return encode_function(fn, same, env, version, True)[0]


class EnvExecutor(Executor):
    """Runs calls in the workers of one environment, as a ``ProcessPoolExecutor`` would.

    Made by ``Runner.executor(env)`` or ``envrunner.executor(env)``. Works wherever an
    ``Executor`` is accepted (``loop.run_in_executor``, ``concurrent.futures.wait``,
    ``as_completed``).

    Args:
        runner: The runner whose workers run the calls.
        env: The environment.
        initializer: Run as ``initializer(*initargs)`` once in each worker of ``env`` before
            the first call of this executor there (it travels as a task's function does).
        initargs: Its arguments.
    """

    def __init__(
        self,
        runner: _Runner,
        env: str,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable, not {type(initializer).__name__}")
        self.env = env
        self._runner = runner
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._key = uuid.uuid4().hex  # names this executor's initializer in the workers
        self._lock = threading.Lock()
        self._shut = False
        self._pending: set[Future[Any]] = set()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Start ``fn(*args, **kwargs)`` in a worker of the environment; return its future.

        Raises:
            RuntimeError: The executor was shut down.
            EncodeError: ``fn`` or an argument cannot be sent (the message names which).
            RunnerClosedError: Its runner was shut down.
        """
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = self._start(fn, args, kwargs)
            self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """``fn`` over the zipped iterables; results in order (``Executor.map``).

        Every call is submitted before this returns, unless ``buffersize`` bounds how many
        are ahead of the results read. ``chunksize`` items travel per message.
        """
        from ._mapping import chunk_options, map_calls

        options = chunk_options(fn, chunksize)

        def submit(f: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
            if f is fn:
                return self.submit(f, *args)
            with self._lock:  # a chunk: map_chunk with fn's options
                if self._shut:
                    raise RuntimeError("cannot schedule new futures after shutdown")
                future = self._start(f, args, {}, options)
                self._pending.add(future)
            future.add_done_callback(self._pending.discard)
            return future

        return map_calls(
            submit,
            fn,
            iterables,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            chunk_code=lambda: code_of(self._runner, self.env, fn),
            owner=self,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; with ``cancel_futures``, cancel those not started (running ones
        finish); with ``wait``, return when every call of this executor is done."""
        with self._lock:
            self._shut = True
            pending = list(self._pending)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            wait_for(pending)

    def _start(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: Any = None,
    ) -> Future[Any]:
        runner = self._runner
        if self._initializer is None:
            return runner._submit(self.env, fn, args, kwargs, options=options)
        from ._runtime.batch import run_with_init

        if options is None:  # the call's own: its timeout, retries and keep
            options = getattr(fn, "__envrunner_options__", None)
        wrapped = (
            self._key,
            code_of(runner, self.env, self._initializer),
            self._initargs,
            code_of(runner, self.env, fn),
            args,
            kwargs,
        )
        return runner._submit(self.env, run_with_init, wrapped, {}, options=options)

    def __repr__(self) -> str:
        state = "shut down" if self._shut else f"{len(self._pending)} pending"
        return f"<EnvExecutor env={self.env!r} {state}>"
