"""Values to bytes: the encoder of the value format (``codec.py`` has its table).

May import: the standard library, msgpack, cloudpickle, numpy (only when the value or the
process has it) and the runtime's ``byname``, ``errors``, ``formats``, ``shm`` (type-only).

::

    value ──► Encoder.encode ──► msgpack body (+ extension types) + buffers out of band
                                 (frames, or shared-memory blocks from ``threshold`` bytes)

Anything msgpack and the extension types cannot carry goes by pickle (protocol 5), or by
cloudpickle when both ends run the same Python minor version.
"""

from __future__ import annotations

import datetime as _dt
import pickle
import sys
import types
from concurrent.futures import Future as _Future
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import msgpack

from .byname import ScriptObjectError
from .byname import dumps as by_name
from .errors import EncodeError, ReferenceLostError
from .formats import (
    BIGINT,
    BODY,
    CLOUDPICKLE,
    COMPLEX,
    DATE,
    DATETIME,
    DECIMAL,
    FROZENSET,
    FUTURE,
    KEPT,
    MAX_BODY,
    MAX_FRAME,
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
    type_name,
)

if TYPE_CHECKING:
    from .shm import Arena

__all__ = ["Encoder", "encode_kept", "pack_small"]


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
        #: Futures found in the last value, each once (None: futures are not looked for, and
        #: travel as any object would); each leaves a mark (extension 42) in its place.
        self.futures: Optional[List[Any]] = None
        #: Values to put in place of futures, by ``id(future)`` (the others leave marks).
        self.fill: Optional[Dict[int, Any]] = None

    def encode(self, obj: Any) -> Tuple[bytes, List[Any]]:
        """Encode ``obj``.

        Returns:
            The body and the list of buffers (bytes-like, 1-D) to send as frames after it.
            Buffers that went through shared memory are listed in ``segments`` and ``blocks``.

        Raises:
            EncodeError: Some part of ``obj`` cannot be sent; the message names its type.
        """
        self._buffers, self.segments, self.blocks, self.refs = [], [], [], []
        if self.futures is not None:
            self.futures = []
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
        return pack_small(obj, self._default)

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
        if self.futures is not None and isinstance(obj, _Future):
            fill = self.fill
            if fill is not None and id(obj) in fill:
                value = fill[id(obj)]  # msgpack calls this once per object: not again
                return value if _packs_as_is(value) else self._default(value)
            index = next((i for i, f in enumerate(self.futures) if f is obj), None)
            if index is None:
                index = len(self.futures)
                self.futures.append(obj)
            return msgpack.ExtType(FUTURE, self._pack([index]))
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
        elif cls.__module__.startswith("pathlib") and path_types().get(cls.__name__) is cls:
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


def _packs_as_is(value: Any) -> bool:
    """Whether msgpack packs ``value`` itself (items of a list or dict come back here)."""
    kind = type(value)
    if kind is int:
        return bool(-(1 << 63) <= value < (1 << 64))
    return kind in _AS_IS


_AS_IS = (type(None), bool, float, str, bytes, list, dict)

#: Built-in types whose subclasses' instances also travel as the built-in value, as a fallback.
_PLAIN_BASES = (str, bytes, bool, int, float, complex, list, tuple, dict, set, frozenset)


#: A packer's first buffer. ``msgpack.packb`` allocates 256 KiB (1 MiB before msgpack 1.1) per
#: call, and freeing it trims the heap: system calls for every small value. It grows as needed.
_SMALL_BUFFER: Dict[str, Any] = {"buf_size": 1024} if msgpack.version >= (1, 1, 0) else {}


def pack_small(obj: Any, default: Optional[Any] = None) -> bytes:
    """``msgpack.packb`` as the codec packs (strict types, bin type, lone surrogates kept), with
    a small first buffer (``_SMALL_BUFFER``)."""
    packer = msgpack.Packer(
        default=default,
        use_bin_type=True,
        strict_types=True,
        unicode_errors="surrogatepass",
        **_SMALL_BUFFER,
    )
    return packer.pack(obj)  # type: ignore[no-any-return]


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


def _dtype_out(dtype: Any) -> Any:
    if dtype.fields is not None or dtype.subdtype is not None:
        return [list(item) for item in dtype.descr]
    return dtype.str
