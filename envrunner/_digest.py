"""Digests of values: what a call's arguments (and a function's data globals) hash to.

May import: the standard library, cloudpickle, blake3 (when installed), numpy (only when a value
is a numpy object).

One digest scheme, used for a call's arguments, for a function's closure values and for the
plain-data globals it reads:

- **plain data** (None, bool, int, float, complex, str, bytes, tuple, list, dict, set,
  frozenset, and nestings of them) by a canonical encoding: each value is fed to the hash with
  a type tag and a length, so ``1``, ``1.0``, ``True`` and ``"1"`` differ, and so do a tuple and
  a list of the same items. **Dicts keep their order** (``{"a": 1, "b": 2}`` and
  ``{"b": 2, "a": 1}`` are different arguments): a Python dict is ordered and a function can see
  the order, so treating them as one would return a result computed for the other. Sets and
  frozensets are unordered: their items' digests are sorted.
- **numpy arrays** by dtype, shape and a hash of their content, read from the array's own
  buffer without a copy (a non-contiguous array is copied once to read it in order), with
  BLAKE3 (the ``blake3`` package, about 5 GB/s per core here) or, where it is not installed,
  BLAKE2b (about 1 GB/s per core); from 16 MiB on, on several threads.
  Numpy scalars by dtype and bytes. Arrays of Python objects (``dtype=object``) by pickle.
- **anything else** by its pickle (cloudpickle, protocol 5): two objects equal in meaning may
  pickle differently (and so miss), and an object that pickles the same after a change the
  pickle does not show would hit. An object that cannot be pickled has no digest:
  :class:`UnhashableValueError` says which.
- **futures** (a call's result passed on before it is done) by the key of the call that makes
  it, when that call is cached (a changed call changes the digest of every call given its
  future, and of theirs), else by their value, waited for.

Everything else is hashed with BLAKE2b from :mod:`hashlib` (32-byte digests, hex).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["UnhashableValueError", "content_hash", "digest_buffer", "digest_value", "new_hash"]

DIGEST_SIZE = 32
#: Arrays at least this large are hashed piecewise on threads.
PARALLEL_BYTES = 16 << 20
PIECE_BYTES = 8 << 20
#: Deeper nestings (or a list holding itself) are digested by their pickle.
MAX_DEPTH = 100

_threads: Any = None

_blake3: Any
try:
    from blake3 import blake3 as _blake3
except ImportError:  # a platform without its wheel: BLAKE2b from hashlib instead
    _blake3 = None


class UnhashableValueError(TypeError):
    """A value that has no digest: not plain data, not an array, and cloudpickle refuses it."""

    def __init__(self, where: str, type_name: str, cause: str) -> None:
        super().__init__(where, type_name, cause)
        self.where = where
        self.type_name = type_name

    def __str__(self) -> str:
        where, type_name, cause = self.args
        return (
            f"{where}: a {type_name} cannot be digested for the cache ({cause}); pass plain "
            "data, an array or a picklable object, or call the task with .options(cache=False)"
        )


def new_hash() -> Any:
    """A fresh BLAKE2b hasher of the digest size used everywhere here."""
    return hashlib.blake2b(digest_size=DIGEST_SIZE)


def digest_value(value: Any, where: str = "value") -> str:
    """The hex digest of ``value`` under the scheme of this module's docstring.

    Args:
        value: Any value.
        where: Named in the error if the value has no digest (``"argument 'x'"``).

    Raises:
        UnhashableValueError: the value is neither plain data nor an array and does not pickle.
    """
    h = new_hash()
    _feed(h, value, where, 0)
    return str(h.hexdigest())


def digest_buffer(data: Any) -> bytes:
    """The digest of a bytes-like object's content (no copy), tagged with its algorithm.

    BLAKE3 (the ``blake3`` package, 3-4x faster than BLAKE2b per core) when installed, else
    BLAKE2b; either on several threads for large buffers. The tag keeps the two apart, so a
    cache written with one is a miss, never a wrong hit, under the other.
    """
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    size = view.nbytes
    if _blake3 is not None:  # a tree hash: the same digest on any number of threads
        threads = _blake3.AUTO if size >= PARALLEL_BYTES else 1
        digest: bytes = _blake3(view, max_threads=threads).digest()
        return b"b3" + digest
    if size < PARALLEL_BYTES or (os.cpu_count() or 1) < 2:
        return b"b2" + hashlib.blake2b(view, digest_size=DIGEST_SIZE).digest()
    offsets = range(0, size, PIECE_BYTES)
    pieces = _pool().map(
        lambda start: hashlib.blake2b(
            view[start : start + PIECE_BYTES], digest_size=DIGEST_SIZE
        ).digest(),
        offsets,
    )
    top = hashlib.blake2b(b"pieces", digest_size=DIGEST_SIZE)
    top.update(struct.pack("<QQ", size, PIECE_BYTES))
    for piece in pieces:
        top.update(piece)
    return b"b2p" + top.digest()


def content_hash() -> Any:
    """A hasher for large content (cache entries): BLAKE3 when installed, else BLAKE2b."""
    if _blake3 is not None:
        return _blake3()
    return new_hash()


def _pool() -> Any:
    global _threads
    if _threads is None:
        from concurrent.futures import ThreadPoolExecutor

        workers = min(8, os.cpu_count() or 2)
        _threads = ThreadPoolExecutor(workers, thread_name_prefix="envrunner-digest")
    return _threads


def _tag(h: Any, tag: bytes, body: bytes) -> None:
    h.update(tag)
    h.update(struct.pack("<Q", len(body)))
    h.update(body)


def _feed(h: Any, value: Any, where: str, depth: int) -> None:
    kind = type(value)
    feeder = _FEEDERS.get(kind)
    if feeder is not None and depth < MAX_DEPTH:
        feeder(h, value, where, depth)
        return
    module = getattr(kind, "__module__", "")
    if (module == "numpy" or module.startswith("numpy.")) and _feed_numpy(h, value, where):
        return
    if isinstance(value, Future):
        _feed_future(h, value, where, depth)
        return
    _feed_pickle(h, value, where)


def _feed_future(h: Any, value: Future[Any], where: str, depth: int) -> None:
    """A future by the key of the call that makes it (a cached call's), so that a changed
    call changes every call given its future; else by its value (waited for)."""
    key = getattr(value, "envrunner_key", None)
    if isinstance(key, str):
        _tag(h, b"F", key.encode())
        return
    try:
        result = value.result()
    except BaseException:  # the call given it fails too (it never runs, nor is stored)
        h.update(b"Xfailed")
    else:
        _feed(h, result, where, depth + 1)


def _feed_none(h: Any, value: Any, where: str, depth: int) -> None:
    h.update(b"N")


def _feed_bool(h: Any, value: bool, where: str, depth: int) -> None:
    h.update(b"T" if value else b"F")


def _feed_int(h: Any, value: int, where: str, depth: int) -> None:
    _tag(h, b"i", str(value).encode())


def _feed_float(h: Any, value: float, where: str, depth: int) -> None:
    if math.isnan(value):
        h.update(b"fnan")
    else:
        h.update(b"f" + struct.pack("<d", value))  # keeps -0.0 apart from 0.0


def _feed_complex(h: Any, value: complex, where: str, depth: int) -> None:
    h.update(b"c")
    _feed_float(h, value.real, where, depth)
    _feed_float(h, value.imag, where, depth)


def _feed_str(h: Any, value: str, where: str, depth: int) -> None:
    _tag(h, b"s", value.encode("utf-8", "surrogatepass"))


def _feed_bytes(h: Any, value: bytes | bytearray, where: str, depth: int) -> None:
    if len(value) >= PARALLEL_BYTES:
        _tag(h, b"B", digest_buffer(value))
    else:
        _tag(h, b"b", bytes(value))


def _feed_sequence(h: Any, value: tuple[Any, ...] | list[Any], where: str, depth: int) -> None:
    h.update(b"(" if isinstance(value, tuple) else b"[")
    h.update(struct.pack("<Q", len(value)))
    for item in value:
        _feed(h, item, where, depth + 1)
    h.update(b")")


def _feed_dict(h: Any, value: dict[Any, Any], where: str, depth: int) -> None:
    h.update(b"{")
    h.update(struct.pack("<Q", len(value)))
    for key, item in value.items():
        _feed(h, key, where, depth + 1)
        _feed(h, item, where, depth + 1)
    h.update(b"}")


def _feed_set(h: Any, value: set[Any] | frozenset[Any], where: str, depth: int) -> None:
    h.update(b"<")
    h.update(struct.pack("<Q", len(value)))
    for item in sorted(digest_value(item, where) for item in value):
        h.update(bytes.fromhex(item))
    h.update(b">")


_FEEDERS: dict[type, Callable[[Any, Any, str, int], None]] = {
    type(None): _feed_none,
    bool: _feed_bool,
    int: _feed_int,
    float: _feed_float,
    complex: _feed_complex,
    str: _feed_str,
    bytes: _feed_bytes,
    bytearray: _feed_bytes,
    tuple: _feed_sequence,
    list: _feed_sequence,
    dict: _feed_dict,
    set: _feed_set,
    frozenset: _feed_set,
}


def _feed_numpy(h: Any, value: Any, where: str) -> bool:
    import numpy as np

    if isinstance(value, np.ndarray) and type(value) is np.ndarray:
        if value.dtype.hasobject:
            return False
        header = f"{value.dtype.str}|{value.dtype.descr}|{value.shape}".encode()
        _tag(h, b"a", header)
        array = value if value.flags.c_contiguous else np.ascontiguousarray(value)
        h.update(digest_buffer(array.reshape(-1).view(np.uint8) if array.size else b""))
        return True
    if isinstance(value, np.generic) and not value.dtype.hasobject:
        _tag(h, b"g", f"{value.dtype.str}|{value.dtype.descr}".encode() + b"|" + value.tobytes())
        return True
    return False


def _feed_pickle(h: Any, value: Any, where: str) -> None:
    import cloudpickle

    kind = type(value)
    try:
        data = cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        raise UnhashableValueError(
            where, f"{kind.__module__}.{kind.__qualname__}", f"{type(exc).__name__}: {exc}"
        ) from None
    _tag(h, b"p", f"{kind.__module__}.{kind.__qualname__}".encode())
    h.update(digest_buffer(data) if len(data) >= PARALLEL_BYTES else new_hash_of(data))


def new_hash_of(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()
