"""Bytes to values: the decoder of the value format (``codec.py`` has its table).

May import: the standard library, msgpack, numpy (only when a value carries an array) and the
runtime's ``errors``, ``formats``, ``shm`` (type-only).

::

    body + buffers (frames, or shared-memory blocks through a Mapper) ──► Decoder.decode ──► value

What this interpreter cannot load (numpy missing, a module not installed) raises a
``DecodeError`` naming it; a subclass of a built-in type falls back to its plain value.
"""

from __future__ import annotations

import datetime as _dt
import pickle
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Optional, Sequence

import msgpack

from .errors import DecodeError
from .formats import (
    BIGINT,
    BODY,
    CLOUDPICKLE,
    COMPLEX,
    DATE,
    DATETIME,
    DECIMAL,
    FROZENSET,
    KEPT,
    NDARRAY,
    NPSCALAR,
    PATH,
    PICKLE,
    REF,
    SET,
    TIME,
    TIMEDELTA,
    TUPLE,
    UUID,
    path_types,
)

if TYPE_CHECKING:
    from .shm import Mapper

__all__ = ["Decoder", "unpack_plain"]


def unpack_plain(data: Any, ext_hook: Any = msgpack.ExtType) -> Any:
    """``msgpack.unpackb`` as the codec reads (str as str, any map key, lone surrogates kept);
    extension types go to ``ext_hook`` (left as ``ExtType`` by default)."""
    return msgpack.unpackb(
        data,
        ext_hook=ext_hook,
        raw=False,
        strict_map_key=False,
        unicode_errors="surrogatepass",
    )


def _tz_in(value: Any) -> Optional[_dt.tzinfo]:
    if value is None:
        return None
    kind = value[0]
    if kind == "offset":
        offset = _dt.timedelta(seconds=value[1])
        return _dt.timezone(offset, value[2]) if value[2] is not None else _dt.timezone(offset)
    import zoneinfo

    return zoneinfo.ZoneInfo(value[1])


def _dtype_in(np: Any, spec: Any) -> Any:
    if isinstance(spec, str):
        return np.dtype(spec)
    return np.dtype([tuple(_listify_shape(item)) for item in spec])


def _listify_shape(item: List[Any]) -> List[Any]:
    # descr entries are (name, type) or (name, type, shape); nested fields are lists of lists.
    out = list(item)
    if len(out) >= 2 and isinstance(out[1], list):
        out[1] = [tuple(_listify_shape(x)) for x in out[1]]
    if len(out) == 3 and isinstance(out[2], list):
        out[2] = tuple(out[2])
    return out


class Decoder:
    """Turns a body and its buffers back into a value.

    Args:
        where: Where the value lands, for messages (``"environment 'torch'"``,
            ``"the caller"``).
        writable_arrays: Copy arrays out of read-only frames so that they can be written to.
    """

    def __init__(
        self,
        where: str = "this interpreter",
        writable_arrays: bool = True,
        mapper: Optional[Mapper] = None,
        objects: Optional[Callable[[int], Any]] = None,
        make_ref: Optional[Callable[[int, str, str], Any]] = None,
    ) -> None:
        self.where = where
        self.writable_arrays = writable_arrays
        self.mapper = mapper
        self.objects = objects
        self.make_ref = make_ref
        self._buffers: Sequence[Any] = ()

    def decode(self, body: Any, buffers: Sequence[Any] = ()) -> Any:
        """Decode a body produced by :class:`Encoder`.

        Raises:
            DecodeError: The value needs something this interpreter lacks (numpy, a module).
        """
        self._buffers = buffers
        try:
            return self._unpack(body)
        except DecodeError:
            raise
        except Exception as exc:  # a malformed body: say so, whatever msgpack raised
            raise DecodeError(
                f"a malformed value arrived in {self.where}: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            self._buffers = ()

    def _unpack(self, data: Any) -> Any:
        return unpack_plain(data, self._ext)

    def _ext(self, code: int, data: bytes) -> Any:
        handler = self._handlers.get(code)
        if handler is None:
            raise DecodeError(
                f"unknown value type (extension {code}) received in {self.where}: "
                "the two sides run different envrunner versions"
            )
        return handler(self, data)

    def _tuple(self, data: bytes) -> Any:
        return tuple(self._unpack(data))

    def _set(self, data: bytes) -> Any:
        return set(self._unpack(data))

    def _frozenset(self, data: bytes) -> Any:
        return frozenset(self._unpack(data))

    def _complex(self, data: bytes) -> Any:
        real, imag = self._unpack(data)
        return complex(real, imag)

    def _bigint(self, data: bytes) -> Any:
        return int(data.decode("ascii"))

    def _datetime(self, data: bytes) -> Any:
        y, mo, d, h, mi, s, us, fold, tz = self._unpack(data)
        return _dt.datetime(y, mo, d, h, mi, s, us, tzinfo=_tz_in(tz), fold=fold)

    def _date(self, data: bytes) -> Any:
        return _dt.date(*self._unpack(data))

    def _time(self, data: bytes) -> Any:
        h, mi, s, us, fold, tz = self._unpack(data)
        return _dt.time(h, mi, s, us, tzinfo=_tz_in(tz), fold=fold)

    def _timedelta(self, data: bytes) -> Any:
        days, seconds, micro = self._unpack(data)
        return _dt.timedelta(days=days, seconds=seconds, microseconds=micro)

    def _decimal(self, data: bytes) -> Any:
        import decimal

        return decimal.Decimal(data.decode("ascii"))

    def _uuid(self, data: bytes) -> Any:
        import uuid

        return uuid.UUID(bytes=bytes(data))

    def _path(self, data: bytes) -> Any:
        name, text = self._unpack(data)
        return path_types()[name](text)

    def _numpy_module(self, what: str) -> Any:
        try:
            import numpy
        except ImportError:
            raise DecodeError(
                f"received a numpy {what}, but numpy is not installed in {self.where}",
                module="numpy",
            ) from None
        return numpy

    def _resolve(self, ref: Any) -> Any:
        """The memory behind a buffer reference: a frame, or a block of shared memory."""
        if isinstance(ref, int):
            return self._buffers[ref]
        if self.mapper is None:
            raise DecodeError(f"received a shared-memory buffer in {self.where}, which has none")
        name, offset, size = ref
        return self.mapper.block(name, offset, size)

    def _ref(self, data: bytes) -> Any:
        (ident,) = self._unpack(data)
        if self.objects is None:
            raise DecodeError(f"received a reference to a kept object in {self.where}")
        return self.objects(ident)

    def _body(self, data: bytes) -> Any:
        (ref,) = self._unpack(data)
        return self._unpack(self._resolve(ref))

    def _kept(self, data: bytes) -> Any:
        ident, name, text = self._unpack(data)
        if self.make_ref is None:
            raise DecodeError(f"received a reference to a kept object in {self.where}")
        return self.make_ref(ident, name, text)

    def _ndarray(self, data: bytes) -> Any:
        np = self._numpy_module("array")
        dtype_spec, shape, order, ref = self._unpack(data)
        dtype = _dtype_in(np, dtype_spec)
        raw = self._resolve(ref)
        stored = shape[::-1] if order == "F" else shape
        if dtype.itemsize == 0 or not len(raw):
            array = np.empty(stored, dtype=dtype)
        else:
            array = np.frombuffer(raw, dtype=dtype).reshape(stored)
        if order == "F":
            array = array.T
        if self.writable_arrays and not array.flags.writeable:
            array = array.copy(order="K")
        return array

    def _npscalar(self, data: bytes) -> Any:
        np = self._numpy_module("scalar")
        dtype_spec, raw = self._unpack(data)
        return np.frombuffer(raw, dtype=_dtype_in(np, dtype_spec))[0]

    def _pickled(self, data: bytes) -> Any:
        name, payload, refs, plain = self._unpack(data)
        buffers = [self._resolve(ref) for ref in refs]
        try:
            return pickle.loads(payload, buffers=buffers)
        except Exception:
            if plain is not None:  # its class is not to be had here: the built-in value is
                return self._unpack(plain)
            return self._pickled_error(name, payload, buffers)

    def _pickled_error(self, name: str, payload: bytes, buffers: List[Any]) -> Any:
        try:
            return pickle.loads(payload, buffers=buffers)
        except ModuleNotFoundError as exc:
            missing = exc.name or str(exc)
            raise DecodeError(
                f"{name} needs module {missing!r}, which is not installed in {self.where}",
                module=missing,
            ) from exc
        except Exception as exc:
            raise DecodeError(
                f"cannot load a {name} in {self.where}: {type(exc).__name__}: {exc}"
            ) from exc

    _handlers: ClassVar[Dict[int, Callable[[Decoder, bytes], Any]]] = {
        TUPLE: _tuple,
        SET: _set,
        FROZENSET: _frozenset,
        COMPLEX: _complex,
        BIGINT: _bigint,
        DATETIME: _datetime,
        DATE: _date,
        TIME: _time,
        TIMEDELTA: _timedelta,
        DECIMAL: _decimal,
        UUID: _uuid,
        PATH: _path,
        NDARRAY: _ndarray,
        NPSCALAR: _npscalar,
        PICKLE: _pickled,
        CLOUDPICKLE: _pickled,
        REF: _ref,
        KEPT: _kept,
        BODY: _body,
    }
