"""Helpers the caller runs in workers by reference: a chunk of a ``map``, a call after an
executor's initializer.

The caller sends the user's function encoded (``code.encode_function``: by reference, by value,
or as source for another Python version) as an argument of these helpers, so a chunk or an
initialized call carries the same function a plain call would::

    map_chunk(code, [[1, 2, 3]])            ─► [fn(1), fn(2), fn(3)]   one message, one answer
    map_chunk(code, [[1, 2], [5, 6]])       ─► [fn(1, 5), fn(2, 6)]    a column per iterable
    run_calls([(code, args, kwargs), ...])  ─► a joblib batch, each call its own function
    run_with_init(key, init, initargs, code, args, kwargs)
        ─► init(*initargs) the first time this process sees ``key`` ─► fn(*args, **kwargs)

This module is part of the sealed worker runtime.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, List, Sequence, Set, Tuple

from .code import load_function

__all__ = ["map_chunk", "run_calls", "run_with_init"]

_CACHE_SIZE = 32
_functions: collections.OrderedDict[bytes, Callable[..., Any]] = collections.OrderedDict()
_initialized: Set[str] = set()
_lock = threading.RLock()


def _function(code: bytes) -> Callable[..., Any]:
    """The function ``code`` encodes, loaded once per worker (the last few kept)."""
    with _lock:
        fn = _functions.get(code)
        if fn is not None:
            _functions.move_to_end(code)
            return fn
    fn = load_function(code)
    with _lock:
        _functions[code] = fn
        while len(_functions) > _CACHE_SIZE:
            _functions.popitem(last=False)
    return fn


def map_chunk(code: bytes, columns: Sequence[Sequence[Any]]) -> List[Any]:
    """``[fn(*args) for args in zip(*columns)]``; an error fails the whole chunk (as the
    standard library's process pool does).

    The arguments travel as columns, one list per iterable of the ``map``, so that a chunk of
    plain items is one msgpack list and no tuple per item has to be encoded and decoded.
    """
    fn = _function(code)
    if len(columns) == 1:
        return [fn(item) for item in columns[0]]
    return [fn(*args) for args in zip(*columns)]


def run_with_init(
    key: str,
    init_code: bytes,
    initargs: Tuple[Any, ...],
    code: bytes,
    args: Tuple[Any, ...],
    kwargs: Any,
) -> Any:
    """Run the initializer of executor ``key`` once in this process, then the call.

    An initializer that raises is not marked done: the error fails this call, and the next
    call of the executor on this worker tries the initializer again.
    """
    if key not in _initialized:
        with _lock:
            first = key not in _initialized
            if first:
                _function(init_code)(*initargs)
                _initialized.add(key)
    return _function(code)(*args, **kwargs)


def run_calls(calls: Sequence[Tuple[bytes, Tuple[Any, ...], Any]]) -> List[Any]:
    """``[fn(*args, **kwargs) for each]``: a batch of a joblib loop, each function encoded."""
    return [_function(code)(*args, **kwargs) for code, args, kwargs in calls]
