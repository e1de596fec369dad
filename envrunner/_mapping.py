"""``map`` over calls, as ``concurrent.futures.Executor.map`` does it (Python 3.14's).

::

    map(fn, xs)                    every call submitted now; results in order, as they come
    map(fn, xs, buffersize=n)      n calls submitted now, one more each time a result is yielded
    map(fn, xs, chunksize=k)       one call of ``_runtime.batch.map_chunk`` per k items, sent
                                   as columns (one list per iterable, no tuple per item); the
                                   chunks' lists flattened in order

An error from the input iterables is raised by ``map`` itself (everything is submitted before
it returns, unless ``buffersize`` asks otherwise). The iterator holds no result it has yielded
(CPython's bug 14406): a yielded value is referenced only by whoever took it. Closing the
iterator before its end cancels the calls that have not started.

May import: the standard library, ``envrunner._options``, ``envrunner._runtime``.
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from ._options import Options

__all__ = ["Submit", "check_sizes", "chunk_options", "map_calls"]

#: How to start one call: ``submit(fn, args)`` returns its future.
Submit = Callable[[Callable[..., Any], tuple[Any, ...]], "Future[Any]"]


def chunk_options(fn: Callable[..., Any], chunksize: int) -> Options | None:
    """The options of a chunk's call: ``fn``'s own (its timeout counts per chunk)."""
    if chunksize == 1:
        return None
    options: Options = getattr(fn, "__envrunner_options__", Options())
    if options.keep:
        raise ValueError(
            "map(chunksize=...) cannot keep results in the worker (keep=True): a chunk's "
            "results come back as one list; use chunksize=1"
        )
    return options


def check_sizes(chunksize: int, buffersize: int | None) -> None:
    """Refuse a chunk or window size that means nothing, as the standard library does."""
    if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
        raise ValueError(f"chunksize must be a positive integer, not {chunksize!r}")
    if buffersize is not None and (
        not isinstance(buffersize, int) or isinstance(buffersize, bool) or buffersize < 1
    ):
        raise ValueError(f"buffersize must be None or a positive integer, not {buffersize!r}")


def map_calls(
    submit: Submit,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    *,
    timeout: float | None = None,
    chunksize: int = 1,
    buffersize: int | None = None,
    chunk_code: Callable[[], bytes] | None = None,
    owner: object = None,
) -> Iterator[Any]:
    """Submit ``fn`` over the zipped ``iterables``; return an iterator of the results in order.

    Args:
        submit: Starts one call.
        fn: The function.
        iterables: Argument iterables, zipped (the shortest wins).
        timeout: Seconds from this call until every result must be in (``TimeoutError``).
        chunksize: Items per call; above 1, ``chunk_code`` gives ``fn`` encoded for the worker.
        buffersize: At most this many calls (chunks) submitted and not yet yielded.
        owner: With ``buffersize``, further calls are submitted only while it is alive (held
            weakly, as the standard library holds its executor).
    """
    check_sizes(chunksize, buffersize)
    end = None if timeout is None else time.monotonic() + timeout
    calls: Iterator[tuple[Callable[..., Any], tuple[Any, ...]]]
    if chunksize > 1:
        from ._runtime.batch import map_chunk

        assert chunk_code is not None
        code = chunk_code()
        calls = ((map_chunk, (code, columns)) for columns in _columns(iterables, chunksize))
    else:
        calls = ((fn, args) for args in zip(*iterables))  # noqa: B905 - the shortest wins
    if buffersize is None:
        futures = deque(submit(f, a) for f, a in calls)
    else:
        futures = deque(submit(f, a) for f, a in itertools.islice(calls, buffersize))
    alive = weakref.ref(owner) if owner is not None else (lambda: True)
    iterator = _results(futures, calls if buffersize else None, submit, alive, end)
    return _flatten(iterator) if chunksize > 1 else iterator


def _columns(iterables: tuple[Iterable[Any], ...], chunksize: int) -> Iterator[list[list[Any]]]:
    """Chunks of the zipped iterables as columns: ``[[x1, x2, ...], [y1, y2, ...]]``."""
    if len(iterables) == 1:
        items = iter(iterables[0])
        while True:
            column = list(itertools.islice(items, chunksize))
            if not column:
                return
            yield [column]
    arguments = zip(*iterables)  # noqa: B905 - the shortest wins
    while True:
        batch = list(itertools.islice(arguments, chunksize))
        if not batch:
            return
        yield [list(column) for column in zip(*batch)]  # noqa: B905 - equal lengths


def _results(
    futures: deque[Future[Any]],
    more: Iterator[tuple[Callable[..., Any], tuple[Any, ...]]] | None,
    submit: Submit,
    alive: Callable[[], object],
    end: float | None,
) -> Iterator[Any]:
    try:
        while futures:
            if more is not None and alive() is not None:
                following = next(more, None)
                if following is not None:
                    futures.append(submit(*following))
            remaining = None if end is None else end - time.monotonic()
            yield _result_or_cancel(futures.popleft(), remaining)
    finally:
        for future in futures:
            future.cancel()


def _result_or_cancel(future: Future[Any], timeout: float | None) -> Any:
    """The future's result; on a timeout or an interrupt, cancel it if it has not started.

    Holds no reference to the future or its value once it returns."""
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        del future


def _flatten(chunks: Iterator[list[Any]]) -> Iterator[Any]:
    """Each chunk's results in order, popped so the iterator keeps none it has yielded."""
    for chunk in chunks:
        chunk.reverse()
        while chunk:
            yield chunk.pop()
