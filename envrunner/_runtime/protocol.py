"""The wire protocol between the broker and its workers: message types, frames, signatures.

Three channels join a worker to its caller (arrows: who sends)::

    caller process                                    worker process
    broker thread, ROUTER  ◄── control (ipc) ──►  main thread, DEALER (identity = its id)
        HELLO      ◄──  versions, pid
        WELCOME    ──►  cwd, sys.path, options
        CALL       ──►  code, args (several when the broker sends calls ahead)
        CALLS      ──►  several small calls in one message, run in order, each answered
        RESULT     ◄──  value, or the error with its traceback
        RELEASE    ──►  arena blocks and kept objects the caller let go of
        SHUTDOWN   ──►
    calling thread, PAIR   ◄── direct (ipc) ───►  main thread, PAIR (one per worker)
        CALL ──► RESULT ◄──  a synchronous call on an idle worker, no broker thread woken
        SHUTDOWN   ──►  after a direct call that reached ``max_calls``
    broker thread, ROUTER  ◄── heartbeat ───────  heartbeat thread, DEALER (identity id.hb.TAG,
                                                  TAG made with the key: ``beat_identity``)
        HEARTBEAT  ◄──  every ``heartbeat`` seconds while the process lives

Every message is a list of frames (the ROUTER adds the peer's identity in front)::

    [signature + header, buffer, buffer, ...]

- The first frame is the 32-byte signature followed by the header (one frame: a small call
  is a single frame each way, and zmq sends one frame much faster than two).
- ``header`` is msgpack: ``[PROTOCOL_VERSION, tag, sequence, field, field, ...]`` with the fields
  of the message type in declaration order; ``bytes`` fields hold codec bodies.
- ``buffer`` frames carry large data (array contents) without copying it into the header.
- ``signature`` is HMAC-SHA256 under the session key over a *scope* and the length-prefixed
  header and buffers. The scope names the channel and the direction (``to:w3``, ``from:w3``,
  ``to:w3/direct``, ``from:w3.hb``...), so a message signed for one worker, channel or direction
  is refused on any other. A receiver checks the signature before decoding anything, and refuses
  a sequence number that is not larger than the last one it accepted in that scope (replays).
- A header larger than ``MAX_HEADER_BYTES`` is refused unread; sockets refuse a frame larger
  than their configured limit (``MAXMSGSIZE``, per frame) before it is received whole. So that
  a peer that has the key is never taken for an attacker, senders keep under both: ``pack``
  refuses a header above the limit (``EncodeError``), the codec sends a large body out of band
  and refuses a buffer above the frame limit (see ``codec.py``).

This module is pure (no sockets, no processes) and part of the sealed worker runtime.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import msgpack

from .errors import EncodeError, ProtocolError

_hmac_new: Optional[Callable[..., Any]]
try:  # CPython's OpenSSL HMAC: one C call, and the GIL kept for a small message
    import _hashlib

    _hmac_new = _hashlib.hmac_new
except (ImportError, AttributeError):  # pragma: no cover - elsewhere, the hmac module's
    _hmac_new = None

__all__ = [
    "PROTOCOL_VERSION",
    "Call",
    "Calls",
    "Heartbeat",
    "Hello",
    "Message",
    "Release",
    "Result",
    "Shutdown",
    "Signer",
    "Verifier",
    "Welcome",
    "beat_identity",
    "call_fields",
    "pack",
    "scope",
    "unpack",
]

PROTOCOL_VERSION = 2  # 2: CALLS
KEY_BYTES = 32
SIGNATURE_BYTES = 32
MAX_HEADER_BYTES = 64 * 1024 * 1024  # code and small values travel here; arrays do not
ONE_SHOT_BYTES = 1 << 20  # a larger frame is hashed in place, not copied behind its prefix


@dataclass(frozen=True)
class Message:
    """Base of every message; ``TAG`` identifies the type on the wire."""

    TAG: ClassVar[int] = 0


@dataclass(frozen=True)
class Hello(Message):
    """Worker to broker, first: who the worker is and what it runs."""

    TAG: ClassVar[int] = 1
    worker_id: str
    env: str
    pid: int
    python: Tuple[int, int, int]
    implementation: str
    platform: str
    versions: Dict[str, str]
    pickle_protocol: int


@dataclass(frozen=True)
class Welcome(Message):
    """Broker to worker, in answer to Hello: where to run and what to import from."""

    TAG: ClassVar[int] = 2
    env: str
    cwd: str
    sys_path: List[str]
    caller_python: Tuple[int, int, int]
    pickle_protocol: int
    options: Dict[str, Any]


@dataclass(frozen=True)
class Call(Message):
    """Broker to worker: run ``code`` on the arguments in ``payload``.

    ``segments`` names the caller's shared-memory segments the arguments use; ``keep`` asks
    the worker to keep the result and answer with a reference to it.
    """

    TAG: ClassVar[int] = 3
    call_id: int
    name: str
    code: bytes
    payload: bytes
    segments: List[str] = field(default_factory=list)
    keep: bool = False
    buffers: Sequence[Any] = field(default=(), compare=False)


@dataclass(frozen=True)
class Result(Message):
    """Worker to broker: the outcome of a call; ``ok`` false means ``payload`` is an error.

    ``segments`` names the worker's shared-memory segments the value uses; ``freed`` lists the
    caller's blocks (``[segment, offset]``) the worker no longer uses; ``kept`` is the id of the
    object kept for a ``keep`` call (0 when none).
    """

    TAG: ClassVar[int] = 4
    call_id: int
    ok: bool
    payload: bytes
    segments: List[str] = field(default_factory=list)
    freed: List[List[Any]] = field(default_factory=list)
    kept: int = 0
    buffers: Sequence[Any] = field(default=(), compare=False)


@dataclass(frozen=True)
class Shutdown(Message):
    """Broker to worker: finish nothing more and exit."""

    TAG: ClassVar[int] = 5


@dataclass(frozen=True)
class Release(Message):
    """Broker to worker: the caller no longer uses these blocks and kept objects."""

    TAG: ClassVar[int] = 6
    blocks: List[List[Any]] = field(default_factory=list)
    refs: List[int] = field(default_factory=list)


@dataclass(frozen=True)
class Heartbeat(Message):
    """Worker to broker, every few seconds from a thread of its own: still alive."""

    TAG: ClassVar[int] = 7
    pid: int


@dataclass(frozen=True)
class Calls(Message):
    """Broker to worker: several calls for one worker, packed in one message (one signature,
    one send) when they wait for it at once. The worker runs them in order, exactly as if each
    had come as a ``Call`` (it records each as it starts it), and answers each with its own
    ``Result``. ``calls`` holds each call's fields in ``Call``'s order, without ``buffers``:
    a call with buffer frames travels as a ``Call`` of its own.
    """

    TAG: ClassVar[int] = 8
    calls: List[List[Any]]

    def unbatch(self) -> List[Call]:
        """The calls, as the ``Call`` messages they stand for."""
        return [Call(*fields) for fields in self.calls]


def call_fields(call: Call) -> List[Any]:
    """A call's entry in a ``Calls`` message (it must have no buffer frames)."""
    return [call.call_id, call.name, call.code, call.payload, call.segments, call.keep]


_TYPES: Dict[int, Type[Message]] = {
    cls.TAG: cls for cls in (Hello, Welcome, Call, Result, Shutdown, Release, Heartbeat, Calls)
}
_FIELDS: Dict[Type[Message], Tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls) if f.name != "buffers") for cls in _TYPES.values()
}
_HAS_BUFFERS = {cls for cls in _TYPES.values() if "buffers" in {f.name for f in fields(cls)}}


def _nbytes(frame: Any) -> int:
    return memoryview(frame).nbytes


class Signer:
    """Signs outgoing messages with the session key and numbers them.

    A Signer serves one thread at a time (each channel has its own). A small message is signed
    by one call into OpenSSL's HMAC that keeps the GIL (``_hashlib.hmac_new``; ``hmac.digest``
    drops the GIL every time, and a thread that drops it while another runs Python waits to get
    it back: with the caller's threads busy, that wait was most of a signature's cost).
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"session key must be {KEY_BYTES} bytes")
        self._key = key
        self._sequence = itertools.count(1)
        #: Packs headers (one packer, reused: ``msgpack.packb`` makes a new one per call).
        self.packer = msgpack.Packer(use_bin_type=True)

    def next_sequence(self) -> int:
        return next(self._sequence)

    def sign(self, frames: Sequence[Any], scope: bytes = b"") -> bytes:
        prefix = len(scope).to_bytes(8, "little") + scope
        if len(frames) == 1:
            frame = frames[0]
            size = _nbytes(frame)
            if size <= ONE_SHOT_BYTES:  # the common case: one small frame, one OpenSSL call
                return _hmac_sha256(self._key, prefix + size.to_bytes(8, "little") + frame)
        mac = hmac.new(self._key, prefix, hashlib.sha256)
        for frame in frames:
            mac.update(_nbytes(frame).to_bytes(8, "little"))
            mac.update(frame)
        return mac.digest()


def _hmac_sha256(key: bytes, data: bytes) -> bytes:
    if _hmac_new is None:
        return hmac.new(key, data, hashlib.sha256).digest()
    digest: bytes = _hmac_new(key, data, "sha256").digest()
    return digest


class Verifier:
    """Checks signatures and refuses replayed sequence numbers, per sender."""

    def __init__(self, key: bytes) -> None:
        self._signer = Signer(key)
        self._last: Dict[bytes, int] = {}
        self.rejected = 0

    def verify(self, scope: bytes, frames: Sequence[Any]) -> Optional[Tuple[int, int, List[Any]]]:
        """Verify ``[signature + header, *buffers]`` received in ``scope``.

        Returns:
            ``(tag, sequence, fields)`` of a valid message, or None (counted in ``rejected``).
        """
        if not frames:
            self.rejected += 1
            return None
        first = memoryview(frames[0]).cast("B")
        if not SIGNATURE_BYTES < first.nbytes <= SIGNATURE_BYTES + MAX_HEADER_BYTES:
            self.rejected += 1
            return None
        signature, header_bytes = first[:SIGNATURE_BYTES], first[SIGNATURE_BYTES:]
        expected = self._signer.sign([header_bytes, *frames[1:]], scope)
        if not hmac.compare_digest(expected, signature):
            self.rejected += 1
            return None
        try:
            header = msgpack.unpackb(header_bytes, raw=False, use_list=True)
            version, tag, sequence = header[0], header[1], header[2]
        except Exception:
            self.rejected += 1
            return None
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"peer speaks envrunner protocol {version}, this side {PROTOCOL_VERSION}: "
                "upgrade envrunner so that both sides match"
            )
        if not isinstance(sequence, int) or sequence <= self._last.get(scope, 0):
            self.rejected += 1
            return None
        self._last[scope] = sequence
        return tag, sequence, header[3:]

    def forget(self, scope: bytes) -> None:
        """Drop what is remembered about a scope whose sender is gone."""
        self._last.pop(scope, None)


def pack(message: Message, signer: Signer, scope: bytes = b"") -> List[Any]:
    """Turn a message into frames ``[signature + header, *buffers]`` signed for ``scope``.

    Raises:
        EncodeError: The header is larger than ``MAX_HEADER_BYTES`` (the receiver would drop it).
    """
    cls = type(message)
    header = signer.packer.pack(
        [PROTOCOL_VERSION, cls.TAG, signer.next_sequence()]
        + [getattr(message, name) for name in _FIELDS[cls]]
    )
    if len(header) > MAX_HEADER_BYTES:
        raise EncodeError(
            f"a {cls.__name__} message header of {len(header):,} bytes is larger than the "
            f"{MAX_HEADER_BYTES:,} bytes a receiver accepts: the function's code (its closure, "
            "its globals) is too large; pass large data as arguments instead"
        )
    buffers = list(getattr(message, "buffers", ()))
    return [signer.sign([header, *buffers], scope) + header, *buffers]


def scope(direction: str, identity: bytes, channel: str = "") -> bytes:
    """The scope a message is signed in: ``to:w3``, ``from:w3/direct``..."""
    return f"{direction}:".encode() + identity + (f"/{channel}".encode() if channel else b"")


def unpack(scope: bytes, frames: Sequence[Any], verifier: Verifier) -> Optional[Message]:
    """Verify and decode frames received in ``scope``; None for anything invalid (counted).

    Raises:
        ProtocolError: A validly signed message from a peer that speaks another version.
    """
    checked = verifier.verify(scope, frames)
    if checked is None:
        return None
    tag, _sequence, values = checked
    cls = _TYPES.get(tag)
    if cls is None or len(values) != len(_FIELDS[cls]):
        verifier.rejected += 1
        return None
    if cls in _HAS_BUFFERS:
        values.append(frames[1:])
    elif len(frames) > 1:
        verifier.rejected += 1
        return None
    try:
        message = cls(*values)
    except TypeError:
        verifier.rejected += 1
        return None
    if cls is Hello:
        object.__setattr__(message, "python", tuple(message.python))  # type: ignore[attr-defined]
    elif cls is Welcome:
        object.__setattr__(message, "caller_python", tuple(message.caller_python))  # type: ignore[attr-defined]
    elif cls is Calls and not _well_formed(message.calls):  # type: ignore[attr-defined]
        verifier.rejected += 1
        return None
    return message


_CALL_FIELDS = len(_FIELDS[Call])


def _well_formed(calls: Any) -> bool:
    return (
        isinstance(calls, list)
        and bool(calls)
        and all(isinstance(c, list) and len(c) == _CALL_FIELDS for c in calls)
    )


# --- issue 20: a heartbeat socket's identity nobody without the key can claim first -------------


def beat_identity(key: bytes, worker_id: bytes) -> bytes:
    """The routing identity of a worker's heartbeat socket: ``ID.hb.TAG``, TAG derived from the
    session key. A ROUTER gives an identity to the first peer that claims it; a process without
    the key cannot know this one, so it cannot take it before the worker and get the worker's
    heartbeats dropped (and the worker killed as hung). Its messages are signed in the scope
    ``from:ID.hb`` all the same."""
    tag = hmac.digest(key, b"envrunner heartbeat identity " + worker_id, "sha256")[:12]
    return worker_id + b".hb." + tag.hex().encode()
