"""Values between environments: msgpack with extension types, buffers out of band.

Plain data (None, bool, int, float, str, bytes, list, dict) is msgpack; what msgpack lacks travels
as an extension type whose payload is again msgpack, so every type round-trips exactly and loads
under any Python and numpy version:

====  ==============================================================
code  payload
====  ==============================================================
1     tuple: the items
2     set: the items
3     frozenset: the items
4     complex: [real, imag]
5     int beyond 64 bits: its decimal text
10    datetime: [y, m, d, H, M, S, us, fold, tz]
11    date: [y, m, d]
12    time: [H, M, S, us, fold, tz]
13    timedelta: [days, seconds, microseconds]
14    Decimal: its text
15    UUID: its 16 bytes
16    pathlib path: [class name, text]
20    numpy array: [dtype, shape, order, buffer]
21    numpy scalar: [dtype, raw bytes]
30    pickle: [type name, pickle bytes, [buffer, ...], plain value (packed as a body) or None]
31    cloudpickle (same Python minor version only): as 30
40    a reference the caller passes back to the worker that holds the object: [id]
41    a reference to an object kept in the worker: [id, type name, repr]
50    the whole body, out of band: [buffer] (a body above ``max_body`` bytes)
====  ==============================================================

An instance of a subclass of a built-in type (``torch.__version__`` is a ``str`` subclass) also
carries its *plain value* (``str(obj)``): a receiver that cannot import the subclass gets that.

A *buffer* is the index of a frame sent after the body, or, for a large buffer sent through
shared memory, ``[segment, offset, size]`` (see ``shm.py``).

Large plain values (70 MB of ``bytes``, a long ``str``, a list of millions of floats) make a
large body; a body above ``max_body`` bytes (16 MiB, well under the protocol's header limit)
travels out of band as one buffer (through shared memory, or in a frame of its own), and the
message carries a small body that points to it (extension 50). A buffer sent in a frame may not
exceed ``max_frame`` bytes (the receiver's ``MAXMSGSIZE``, which drops a larger frame unread):
the encoder refuses it with an :class:`EncodeError` that names the limit and the way around it.
When shared memory is full (``ENOSPC``), buffers go in frames instead.

``tz`` is None, ``["offset", seconds, name]`` or ``["zone", key]`` (a ``zoneinfo`` key).
A dtype is ``dtype.str`` (``"<f8"``) or, for structured dtypes, ``dtype.descr``.

Every array buffer travels outside the body, so it is never copied into it: in a frame of its own,
or, from ``threshold`` bytes up when the two ends share a machine, through a shared-memory arena
(one copy in on the sending side, none on the receiving side). Objects exposing
``__array_interface__`` travel as numpy arrays; ``bytearray`` and ``memoryview`` arrive as
``bytes`` (msgpack packs every byte buffer the same way). Anything else goes by pickle
(protocol 5, its buffers out of band too), or by cloudpickle when both ends run the same Python
minor version.

This module is part of the sealed worker runtime: standard library, msgpack, cloudpickle
(imported on first use) and numpy (only if the value or the process already has it).
"""

from __future__ import annotations

import datetime as _dt
import pickle
import sys
import types
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import msgpack

from .byname import ScriptObjectError
from .byname import dumps as by_name
from .errors import DecodeError, EncodeError, ReferenceLostError

if TYPE_CHECKING:
    from .shm import Arena, Mapper

__all__ = ["Decoder", "Encoder", "encode_kept", "type_name"]

TUPLE, SET, FROZENSET, COMPLEX, BIGINT = 1, 2, 3, 4, 5
DATETIME, DATE, TIME, TIMEDELTA, DECIMAL, UUID, PATH = 10, 11, 12, 13, 14, 15, 16
NDARRAY, NPSCALAR = 20, 21
PICKLE, CLOUDPICKLE = 30, 31
REF, KEPT = 40, 41
BODY = 50

#: Bodies above this many bytes travel out of band (a header holds at most 64 MiB).
MAX_BODY = 16 * 1024 * 1024
#: The largest frame a receiver accepts by default (``Runner(max_message_bytes=)``).
MAX_FRAME = 1 << 30

_PATH_NAMES = frozenset({"PurePath", "PurePosixPath", "PureWindowsPath", "Path", "PosixPath"})


def _path_types() -> Dict[str, Any]:
    """pathlib's classes by name (pathlib, decimal and uuid load only when a value needs them:
    a worker starts faster without them)."""
    import pathlib

    return {name: getattr(pathlib, name) for name in _PATH_NAMES}


def type_name(obj: Any) -> str:
    """``module.QualName`` of ``obj``'s type, for messages."""
    cls = type(obj)
    module = getattr(cls, "__module__", "") or ""
    qualname = getattr(cls, "__qualname__", cls.__name__)
    return qualname if module == "builtins" else f"{module}.{qualname}"


class Encoder:
    """Turns a value into a msgpack body plus out-of-band buffers.

    Args:
        by_value: Allow cloudpickle for what plain pickle cannot send (classes and functions
            defined in ``__main__``, lambdas). Only true when the receiver runs the same Python
            minor version: by-value code from another version crashes the reader.
        pickle_protocol: The pickle protocol both ends agreed on.
    """

    def __init__(
        self,
        by_value: bool = True,
        pickle_protocol: int = 5,
        arena: Optional[Arena] = None,
        threshold: int = 0,
        max_frame: Optional[int] = MAX_FRAME,
        max_body: Optional[int] = MAX_BODY,
    ) -> None:
        self.by_value = by_value
        self.pickle_protocol = pickle_protocol
        self.arena = arena if threshold > 0 else None
        self.threshold = threshold
        #: The largest buffer that may go in a frame (None: no limit).
        self.max_frame = max_frame if max_frame is not None and max_frame > 0 else None
        #: Bodies above this go out of band (None: never).
        self.max_body = max_body
        if max_body is not None and self.max_frame is not None:
            self.max_body = min(max_body, self.max_frame // 2)
        #: Whether shared memory ran out during the last value (its buffers went in frames).
        self.shm_full = False
        self._buffers: List[Any] = []
        #: Segments the last value's buffers went into (the receiver maps them).
        self.segments: List[str] = []
        #: Blocks of the arena the last value lent to its receiver: ``[segment, offset]``.
        self.blocks: List[List[Any]] = []
        #: Objects with ``__envrunner_ref__`` found in the last value.
        self.refs: List[Any] = []

    def encode(self, obj: Any) -> Tuple[bytes, List[Any]]:
        """Encode ``obj``.

        Returns:
            The body and the list of buffers (bytes-like, 1-D) to send as frames after it.
            Buffers that went through shared memory are listed in ``segments`` and ``blocks``.

        Raises:
            EncodeError: Some part of ``obj`` cannot be sent; the message names its type.
        """
        self._buffers, self.segments, self.blocks, self.refs = [], [], [], []
        self.shm_full = False
        try:
            body = self._pack(obj)
            if self.max_body is not None and len(body) > self.max_body:
                body = msgpack.packb(
                    msgpack.ExtType(BODY, self._pack([self._buffer(body, "value")])),
                    use_bin_type=True,
                )
        except (EncodeError, ReferenceLostError):
            self.release()
            raise
        except Exception as exc:
            self.release()
            raise EncodeError(f"cannot encode a {type_name(obj)}: {exc}") from exc
        buffers, self._buffers = self._buffers, []
        return body, buffers

    def release(self) -> None:
        """Give back the arena blocks of the last value (it was never sent)."""
        if self.arena is not None:
            for name, offset in self.blocks:
                self.arena.free(name, offset)
        self.blocks = []

    # ------------------------------------------------------------------ internals

    def _pack(self, obj: Any) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            obj,
            default=self._default,
            use_bin_type=True,
            strict_types=True,
            unicode_errors="surrogatepass",
        )

    def _buffer(self, data: Any, what: str = "buffer") -> Any:
        size = memoryview(data).nbytes
        if self.arena is not None and size >= self.threshold and not self.shm_full:
            try:
                name, offset, size = self.arena.put(data)
            except OSError:  # shared memory is full (ENOSPC): this value goes in frames
                self.shm_full = True
            else:
                if name not in self.segments:
                    self.segments.append(name)
                self.blocks.append([name, offset])
                return [name, offset, size]
        if self.max_frame is not None and size > self.max_frame:
            if self.arena is None:
                around = "turn shared memory on (shm_threshold > 0, the default)"
            else:
                around = "free space in shared memory (it was full)"
            raise EncodeError(
                f"a {what} of {size:,} bytes is larger than the largest message frame the "
                f"receiver accepts ({self.max_frame:,} bytes, max_message_bytes): {around}, "
                "raise Runner(max_message_bytes=...), or send it in smaller pieces",
                what=what,
            )
        self._buffers.append(data)
        return len(self._buffers) - 1

    def _default(self, obj: Any) -> Any:
        cls = type(obj)
        ref = getattr(obj, "__envrunner_ref__", None)
        if ref is not None:
            self.refs.append(obj)
            return msgpack.ExtType(REF, self._pack([ref]))
        if cls is tuple:
            return msgpack.ExtType(TUPLE, self._pack(list(obj)))
        if cls is set:
            return msgpack.ExtType(SET, self._pack(list(obj)))
        if cls is frozenset:
            return msgpack.ExtType(FROZENSET, self._pack(list(obj)))
        if cls is complex:
            return msgpack.ExtType(COMPLEX, self._pack([obj.real, obj.imag]))
        if cls is int:  # only reached for ints beyond 64 bits
            return msgpack.ExtType(BIGINT, str(obj).encode("ascii"))
        if cls is _dt.datetime:
            fields = [obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second]
            fields += [obj.microsecond, obj.fold, _tz_out(obj.tzinfo, obj)]
            if fields[-1] is not _UNPORTABLE:
                return msgpack.ExtType(DATETIME, self._pack(fields))
        elif cls is _dt.date:
            return msgpack.ExtType(DATE, self._pack([obj.year, obj.month, obj.day]))
        elif cls is _dt.time:
            fields = [obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold]
            fields.append(_tz_out(obj.tzinfo, None))
            if fields[-1] is not _UNPORTABLE:
                return msgpack.ExtType(TIME, self._pack(fields))
        elif cls is _dt.timedelta:
            return msgpack.ExtType(TIMEDELTA, self._pack([obj.days, obj.seconds, obj.microseconds]))
        elif cls.__name__ == "Decimal" and cls.__module__ in ("decimal", "_decimal"):
            return msgpack.ExtType(DECIMAL, str(obj).encode("ascii"))
        elif cls.__name__ == "UUID" and cls.__module__ == "uuid":
            return msgpack.ExtType(UUID, obj.bytes)
        elif cls.__module__.startswith("pathlib") and _path_types().get(cls.__name__) is cls:
            return msgpack.ExtType(PATH, self._pack([cls.__name__, str(obj)]))
        else:
            np = sys.modules.get("numpy")
            if np is not None:
                foreign = not isinstance(obj, (np.ndarray, np.generic))
                if foreign and hasattr(obj, "__array_interface__"):
                    obj = np.asarray(obj)  # an array-like of another library: its data
                packed = self._numpy(np, obj)
                if packed is not None:
                    return packed
        return self._pickle(obj)

    def _numpy(self, np: Any, obj: Any) -> Optional[msgpack.ExtType]:
        if isinstance(obj, np.ndarray) and type(obj) is np.ndarray:
            dtype = obj.dtype
            if dtype.hasobject:
                return None  # object arrays hold Python objects: only pickle can carry them
            if obj.flags.c_contiguous:
                order, data = "C", obj
            elif obj.flags.f_contiguous:
                order, data = "F", obj.T
            else:
                order, data = "C", np.ascontiguousarray(obj)
            raw = data.reshape(-1).view(np.uint8) if data.size else b""
            header = [_dtype_out(dtype), list(obj.shape), order, self._buffer(raw, "numpy array")]
            return msgpack.ExtType(NDARRAY, self._pack(header))
        if isinstance(obj, np.generic) and not obj.dtype.hasobject:
            return msgpack.ExtType(NPSCALAR, self._pack([_dtype_out(obj.dtype), obj.tobytes()]))
        return None

    def _pickle(self, obj: Any) -> msgpack.ExtType:
        first = len(self._buffers)
        refs: List[Any] = []

        def keep(buffer: pickle.PickleBuffer) -> Optional[bool]:
            try:
                refs.append(self._buffer(buffer.raw()))
            except BufferError:  # not contiguous: let pickle copy it in band
                return True
            return None

        if self.by_value:
            import cloudpickle

            code, dump = CLOUDPICKLE, cloudpickle.dumps
        else:
            if isinstance(obj, (types.FunctionType, type)) and obj.__module__ == "__main__":
                kind = "class" if isinstance(obj, type) else "function"
                raise EncodeError(
                    f"the {kind} __main__.{obj.__qualname__} cannot travel as a value to a worker "
                    "on another Python version: pickle sends it by name, and the worker cannot "
                    f"import your script; move {obj.__qualname__} into a module next to your "
                    "script (the worker imports it from there)",
                    what=f"__main__.{obj.__qualname__}",
                )
            module = getattr(type(obj), "__module__", "")
            if module == "__main__":
                raise EncodeError(
                    f"a {type_name(obj)} cannot travel to a worker on another Python version: "
                    f"its class is defined in __main__, which the worker cannot import; "
                    f"move {type(obj).__qualname__} into a module next to your script",
                    what=type_name(obj),
                )
            code, dump = PICKLE, by_name  # refuses what names __main__, at any depth
        try:
            data = dump(obj, protocol=self.pickle_protocol, buffer_callback=keep)
        except ScriptObjectError as exc:
            del self._buffers[first:]
            raise EncodeError(f"a {type_name(obj)} cannot be sent: {exc}", what=exc.what) from None
        except EncodeError:  # one of its buffers is too large to send: said as it is
            del self._buffers[first:]
            raise
        except Exception as exc:
            del self._buffers[first:]
            raise EncodeError(
                f"a {type_name(obj)} cannot be sent: {type(exc).__name__}: {exc}",
                what=type_name(obj),
            ) from exc
        plain = None
        base = next((b for b in _PLAIN_BASES if isinstance(obj, b)), None)
        if base is not None:
            plain = self._pack(base(obj))
        return msgpack.ExtType(code, self._pack([type_name(obj), data, refs, plain]))


#: Built-in types whose subclasses' instances also travel as the built-in value, as a fallback.
_PLAIN_BASES = (str, bytes, bool, int, float, complex, list, tuple, dict, set, frozenset)


def encode_kept(ident: int, name: str, text: str) -> bytes:
    """The body of a ``keep`` call's answer: a reference to the object the worker kept."""
    inner = msgpack.packb([ident, name, text], use_bin_type=True)
    return msgpack.packb(msgpack.ExtType(KEPT, inner), use_bin_type=True)  # type: ignore[no-any-return]


class _Unportable:
    pass


_UNPORTABLE = _Unportable()


def _tz_out(tz: Optional[_dt.tzinfo], when: Optional[_dt.datetime]) -> Any:
    if tz is None:
        return None
    if type(tz) is _dt.timezone:
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        default = _dt.timezone(offset).tzname(None)
        return ["offset", offset.total_seconds(), None if name == default else name]
    key = getattr(tz, "key", None)
    if type(tz).__module__ == "zoneinfo" and isinstance(key, str):
        return ["zone", key]
    return _UNPORTABLE


def _tz_in(value: Any) -> Optional[_dt.tzinfo]:
    if value is None:
        return None
    kind = value[0]
    if kind == "offset":
        offset = _dt.timedelta(seconds=value[1])
        return _dt.timezone(offset, value[2]) if value[2] is not None else _dt.timezone(offset)
    import zoneinfo

    return zoneinfo.ZoneInfo(value[1])


def _dtype_out(dtype: Any) -> Any:
    if dtype.fields is not None or dtype.subdtype is not None:
        return [list(item) for item in dtype.descr]
    return dtype.str


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
        return msgpack.unpackb(
            data,
            ext_hook=self._ext,
            raw=False,
            strict_map_key=False,
            unicode_errors="surrogatepass",
        )

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
        return _path_types()[name](text)

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
