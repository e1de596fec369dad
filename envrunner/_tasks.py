"""What users write: ``@task`` and ``call``.

::

    @task(env="torch", timeout=600)  ─► Task(fn, Options(env, timeout, keep, retries, cache...))
    train(x)          ─► current_runner().call(...)    blocks; the value or the task's error
    train.submit(x)   ─► current_runner().submit(...)  a CallFuture
    train.map(xs)     ─► current_runner().map(...)     results in order
    await train.acall(x) ─► current_runner().acall(...)  for asyncio
    train.options(keep=True)  ─► Task[P, Ref]: results stay in the worker
    train.save(path, x)  ─► a saved call (``_saved``), run later by ``envrunner run path``

A task carries its options as one :class:`~envrunner._options.Options` record
(``__envrunner_options__``), which the runner reads; the runner never needs this module.

May import: the standard library, ``envrunner._encode``, ``_executor``, ``_options``,
``_futures``, ``_live``, ``_runner``, ``_saved``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TextIO, TypeVar, overload

from ._encode import parameter_names
from ._futures import Ref
from ._options import SAME, Options, Same
from ._runner import current_runner

if TYPE_CHECKING:
    from ._executor import EnvExecutor
    from ._live import LiveView

__all__ = ["Task", "call", "executor", "live", "task"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Task(Generic[P, R]):
    """A function pinned to an environment: calling it runs it in a worker of that environment.

    Made by :func:`task`; behaves like the function (name, docstring, signature) and adds
    :meth:`submit` and :meth:`map`.
    """

    def __init__(self, fn: Callable[P, Any], options: Options | None = None) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.__envrunner_fn__ = fn
        self.__envrunner_options__ = options or Options()
        # (encoding, name) by (same Python, by reference), shared with its .options() copies
        self.__envrunner_codes__: dict[tuple[bool, bool], tuple[bytes, str]] = {}
        self._takes_keep = "keep" in parameter_names(fn, keyword=True)

    @property
    def env(self) -> str | None:
        return self.__envrunner_options__.env

    @property
    def timeout(self) -> float | None:
        return self.__envrunner_options__.timeout

    @property
    def keep(self) -> bool:
        return self.__envrunner_options__.keep

    @property
    def retries(self) -> int:
        return self.__envrunner_options__.retries

    @property
    def cache(self) -> bool:
        return self.__envrunner_options__.cache

    @overload
    def options(
        self,
        *,
        env: str | None = None,
        timeout: float | Literal[Same.SAME] | None = SAME,
        keep: Literal[True],
        retries: int | None = None,
        cache: bool | None = None,
        cache_errors: bool | None = None,
        merge: bool | None = None,
    ) -> Task[P, Ref]: ...

    @overload
    def options(
        self,
        *,
        env: str | None = None,
        timeout: float | Literal[Same.SAME] | None = SAME,
        keep: Literal[False] | None = None,
        retries: int | None = None,
        cache: bool | None = None,
        cache_errors: bool | None = None,
        merge: bool | None = None,
    ) -> Task[P, R]: ...

    def options(
        self,
        *,
        env: str | None = None,
        timeout: float | Literal[Same.SAME] | None = SAME,
        keep: bool | None = None,
        retries: int | None = None,
        cache: bool | None = None,
        cache_errors: bool | None = None,
        merge: bool | None = None,
    ) -> Task[P, Any]:
        """The same task with other options (those not given stay as they are).

        ``task.options(keep=True)(x)`` keeps the result in the worker and returns a :class:`Ref`;
        ``task.options(timeout=None)`` drops the task's own timeout, back to the environment's
        (its manifest ``timeout:``, else none); ``task.options(cache=False)(x)`` runs and
        stores nothing; ``task.options(merge=False)`` runs every call, even identical ones
        pending at once.

        Raises:
            ValueError: ``keep=True`` on a task with ``cache=True`` (or the other way round).
        """
        changed = self.__envrunner_options__.but(
            env=env,
            timeout=timeout,
            keep=keep,
            retries=retries,
            cache=cache,
            cache_errors=cache_errors,
            merge=merge,
        )
        other: Task[P, Any] = Task(self.fn, changed)
        other.__envrunner_codes__ = self.__envrunner_codes__
        return other

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in its environment and return its result (or raise its error)."""
        runner = current_runner()
        value: R = runner.call(runner.env_of(self), self, *args, **kwargs)
        return value

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Start the call and return a ``concurrent.futures.Future`` for its result.

        Raises:
            EncodeError: An argument cannot be sent (the message names it).
            UnknownEnvironmentError: The task's environment is not in the manifest.
        """
        target: Task[P, Any] = self
        if "keep" in kwargs and not self._takes_keep:  # .submit(..., keep=True)
            target = self.options(keep=True) if kwargs.pop("keep") else self.options(keep=False)
        runner = current_runner()
        return runner.submit(runner.env_of(self), target, *args, **kwargs)

    def save(self, path: str | os.PathLike[str], /, *args: P.args, **kwargs: P.kwargs) -> Path:
        """Save the call ``task(*args, **kwargs)`` to ``path``, to run later with
        ``envrunner run path`` (here, or wherever the manifest's environment can be built).

        The file holds the function (by reference when its module is importable, else by
        value or as source), the arguments, and the environment's manifest entry and key;
        ``envrunner run`` writes the value beside it (``path.result``, a pickle) and how the
        call went (``path.outcome.json``). See docs/workflows.md.

        Returns:
            The file written.

        Raises:
            EncodeError: The function or an argument cannot be saved (the message says which).
            ValueError: The task has ``keep=True``.
            EnvrunnerError: The file cannot be written (missing folders are made).
        """
        from ._saved import save_call

        runner = current_runner()
        env = runner.env_of(self)
        resolved = runner._resolve(runner.manifest[env])
        return save_call(
            path, self, self.__envrunner_options__, resolved, runner.manifest.path, args, kwargs
        )

    async def acall(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """``await task.acall(x)``: the call for asyncio. Cancelling the awaiting task cancels
        the call if no worker has started it."""
        runner = current_runner()
        value: R = await runner.acall(runner.env_of(self), self, *args, **kwargs)
        return value

    def map(
        self,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[R]:
        """Like ``Executor.map``: every call submitted now, results in order.

        Args:
            *iterables: Argument iterables, zipped.
            timeout: Seconds from this call until every result must be in.
            chunksize: Items per message (one call per chunk in the worker).
            buffersize: Submit only this many calls ahead of the results read (for huge or
                endless inputs; Python 3.14's meaning).
        """
        runner = current_runner()
        return runner.map(
            runner.env_of(self),
            self,
            *iterables,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
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
    keep: Literal[True],
    retries: int = 0,
    cache: Literal[False] = False,
    cache_errors: bool = False,
    merge: bool | None = None,
) -> Callable[[Callable[P, Any]], Task[P, Ref]]: ...


@overload
def task(
    *,
    env: str | None = None,
    timeout: float | None = None,
    keep: Literal[False] = False,
    retries: int = 0,
    cache: bool = False,
    cache_errors: bool = False,
    merge: bool | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    env: str | None = None,
    timeout: float | None = None,
    keep: bool = False,
    retries: int = 0,
    cache: bool = False,
    cache_errors: bool = False,
    merge: bool | None = None,
) -> Task[P, Any] | Callable[[Callable[P, Any]], Task[P, Any]]:
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
        cache: Store each result on disk and return it, without running, when the same call
            comes again: same code (the function and the helpers of your project it calls),
            same arguments, same environment and packages (see docs/caching.md).
        cache_errors: With ``cache``, store an exception the task raised too: the same call
            raises it again without running.
        merge: Merge identical calls (same function, arguments, environment) submitted while
            one is pending: it runs once and every future gets its result. Default: on with
            ``cache`` (a cached task is declared to give the same result for the same call),
            off without; ``merge=False`` for a cached task with side effects.

    Returns:
        A :class:`Task`.

    Raises:
        ValueError: ``keep=True`` with ``cache=True``.
    """
    options = Options(
        env=env,
        timeout=timeout,
        keep=keep,
        retries=retries,
        cache=cache,
        cache_errors=cache_errors,
        merge=merge,
    )

    def decorate(function: Callable[P, Any]) -> Task[P, Any]:
        return Task(function, options)

    return decorate(fn) if fn is not None else decorate


def call(env: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a worker of ``env`` and return its result.

    Raises:
        Whatever ``fn`` raised (its remote traceback attached as ``__cause__``), or an
        ``EnvrunnerError`` that says what went wrong around it.
    """
    return current_runner().call(env, fn, *args, **kwargs)


def executor(
    env: str,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
) -> EnvExecutor:
    """A ``concurrent.futures.Executor`` running calls in ``env`` on the current runner.

    See :meth:`Runner.executor`.
    """
    return current_runner().executor(env, initializer, initargs)


def live(stream: TextIO | None = None, interval: float | None = None) -> LiveView:
    """``with envrunner.live():`` shows, per environment, how many calls of the current runner
    are queued, running, done and failed: a table redrawn in place on a terminal, a plain line
    (when something changed) every ``interval`` seconds otherwise, and the final counts when
    the block ends. See :meth:`Runner.live` and docs/workflows.md.

    Args:
        stream: Where to write (default: stderr).
        interval: Seconds between updates (default: 0.5 on a terminal, 10 in a log).
    """
    return current_runner().live(stream, interval)
