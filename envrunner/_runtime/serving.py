"""The serving loop of a worker: calls in, answers out, one at a time.

May import: the standard library, msgpack, zmq and the runtime's package (its version),
``code``, ``codec``, ``errors``, ``exits``, ``protocol``, ``shm``, ``wire``. ``worker`` starts it
(see its drawing).

::

    HELLO (versions, pid) ──► the caller      ◄── WELCOME: settle (cwd, sys.path, arena)
    CALL on control or direct ──► (control: mark started) load the function (cached),
        decode the arguments, run, flush stdout/stderr, encode ──► RESULT on that channel
    CALLS on control ──► each of its calls in turn, as above, each answered as it ends
    RELEASE ──► free arena blocks and kept objects      SHUTDOWN ──► serve() returns 0

A :class:`Channel` is one socket with its signatures; :class:`Worker` holds what lives
between calls (loaded functions, kept objects, the arena) and turns each call into a
``Result``: the value, or the error with its traceback.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import __version__, shm, wire
from .code import load_function
from .codec import Decoder, Encoder, encode_kept, type_name
from .errors import DecodeError, EncodeError
from .exits import EXIT_NO_WELCOME
from .protocol import (
    PROTOCOL_VERSION,
    Call,
    Calls,
    Hello,
    Release,
    Result,
    Shutdown,
    Signer,
    Verifier,
    Welcome,
    pack,
    scope,
    unpack,
)
from .shm import Arena, Mapper

WELCOME_TIMEOUT_MS = 60_000
FUNCTION_CACHE_SIZE = 256


def _versions() -> Dict[str, str]:
    import msgpack
    import zmq

    versions = {
        "envrunner": __version__,
        "protocol": str(PROTOCOL_VERSION),
        "python": sys.version.split()[0],
        "msgpack": ".".join(str(x) for x in msgpack.version),
        "pyzmq": zmq.__version__,
    }
    versions["cloudpickle"] = _cloudpickle_version()
    return versions


def _cloudpickle_version() -> str:
    """cloudpickle's version without importing it (or importlib.metadata): both cost tens of
    milliseconds at every worker start, and only by-value calls need cloudpickle."""
    import importlib.util
    import re

    loaded = sys.modules.get("cloudpickle")
    if loaded is not None:
        return str(getattr(loaded, "__version__", ""))
    try:
        spec = importlib.util.find_spec("cloudpickle")
        origin = spec.origin if spec is not None else None
        if origin is None:
            return ""
        with open(origin, encoding="utf-8") as stream:
            match = re.search(r"^__version__\s*=\s*[\"']([^\"']+)", stream.read(), re.M)
    except (OSError, ImportError, ValueError):
        return ""
    return match.group(1) if match else ""


class Channel:
    """One socket to the caller, with its own signatures and sequence numbers.

    Messages are signed in the scope ``from:<id>[/channel]`` and accepted only when signed in
    ``to:<id>[/channel]``: nothing meant for another worker or channel, or sent the other way,
    passes.
    """

    def __init__(self, socket: Any, key: bytes, identity: bytes, channel: str = "") -> None:
        self.socket = socket
        self.signer = Signer(key)
        self.verifier = Verifier(key)
        self.outgoing = scope("from", identity, channel)
        self.incoming = scope("to", identity, channel)

    def send(self, message: Any) -> None:
        wire.send(self.socket, pack(message, self.signer, self.outgoing))

    def receive(self) -> Any:
        """The next valid message (invalid ones are dropped and counted)."""
        while True:
            message = self.receive_one()
            if message is not None:
                return message

    def receive_one(self) -> Any:
        """One waiting message, or None if it was invalid (dropped and counted)."""
        return unpack(self.incoming, wire.receive(self.socket), self.verifier)


class Worker:
    """One worker process's state: its channels, kept objects and loaded functions.

    Calls come on two channels: ``control`` (the broker's ROUTER: calls submitted as futures,
    and everything else) and ``direct`` (a channel of this worker's own that a calling thread
    uses for a synchronous call, without going through the broker's thread). An answer goes
    back on the channel its call came on.
    """

    def __init__(
        self, control: Channel, direct: Optional[Channel], worker_id: str, env: str
    ) -> None:
        self.control = control
        self.direct = direct
        self.worker_id = worker_id
        self.env = env
        self.functions: OrderedDict[bytes, Callable[..., Any]] = OrderedDict()
        self.started_fd = -1  # see mark_started
        self.by_value = True
        self.pickle_protocol = 5
        self.arena: Optional[Arena] = None
        self.threshold = 0
        self.max_frame: Optional[int] = None  # the broker's MAXMSGSIZE (None: no limit)
        self.blocks: List[List[Any]] = []  # the arena blocks of the answer being sent
        #: Waits for the caller's first message (a remote worker says what it sees); None:
        #: a plain poll of up to ``WELCOME_TIMEOUT_MS``.
        self.wait_welcome: Optional[Callable[[], bool]] = None
        #: The caller's blocks this worker is done with, told with the next result.
        self.freed: List[List[Any]] = []
        self.mapper = Mapper(lambda name, offset: self.freed.append([name, offset]))
        #: Objects kept for the caller (``keep=True`` calls), by reference id.
        self.objects: Dict[int, Any] = {}
        self.next_object = 1
        self.decoder = Decoder(
            where=f"environment {env!r}", mapper=self.mapper, objects=self.kept_object
        )

    def hello(self) -> Welcome:
        import pickle

        self.control.send(
            Hello(
                worker_id=self.worker_id,
                env=self.env,
                pid=os.getpid(),
                python=tuple(sys.version_info[:3]),  # type: ignore[arg-type]
                implementation=sys.implementation.name,
                platform=f"{sys.platform}-{os.uname().machine}",  # platform.platform() forks
                versions=_versions(),
                pickle_protocol=pickle.HIGHEST_PROTOCOL,
            )
        )
        if self.wait_welcome is not None:
            arrived = self.wait_welcome()
        else:
            arrived = bool(self.control.socket.poll(WELCOME_TIMEOUT_MS))
        if not arrived:
            os._exit(EXIT_NO_WELCOME)
        welcome = self.control.receive()
        if not isinstance(welcome, Welcome):
            os._exit(EXIT_NO_WELCOME)
        return welcome

    def settle(self, welcome: Welcome) -> None:
        """Take the caller's working folder and project folders, as the welcome says."""
        sys.modules[__package__ or "envrunner._runtime"].WORKER_ENV = welcome.env  # type: ignore[attr-defined]
        self.env = welcome.env
        self.by_value = tuple(welcome.caller_python[:2]) == tuple(sys.version_info[:2])
        self.pickle_protocol = welcome.pickle_protocol
        try:
            os.chdir(welcome.cwd)
        except OSError as exc:
            print(f"envrunner worker: cannot enter {welcome.cwd}: {exc}", file=sys.stderr)
        position = 1 if sys.path else 0
        sys.path[position:position] = [p for p in welcome.sys_path if p not in sys.path]
        self.max_frame = self.max_frame or welcome.options.get("max_frame")
        shared = welcome.options.get("shm")
        if shared and shm.available():
            self.arena = Arena(f"envrunner-{shared['owner']}-{os.getpid()}")
            self.threshold = int(shared["threshold"])

    def serve(self) -> int:
        import zmq

        poller = zmq.Poller()
        channels = {self.control.socket: self.control}
        if self.direct is not None:
            channels[self.direct.socket] = self.direct
        for socket in channels:
            poller.register(socket, zmq.POLLIN)
        try:
            while True:
                for socket, _ in poller.poll():
                    channel = channels[socket]
                    message = channel.receive_one()
                    if isinstance(message, Call):
                        if channel is self.control:  # direct calls are never sent ahead
                            self.mark_started(message.call_id)
                        self.send_answer(channel, message, self.run(message))
                    elif isinstance(message, Calls) and channel is self.control:
                        for call in message.unbatch():  # as if each had come on its own
                            self.mark_started(call.call_id)
                            self.send_answer(channel, call, self.run(call))
                    elif isinstance(message, Release):
                        self.release(message)
                    elif isinstance(message, Shutdown):
                        return 0
        finally:
            if self.arena is not None:
                self.arena.close()

    def send_answer(self, channel: Channel, call: Call, result: Result) -> None:
        """Send a call's answer; one that cannot be sent is replaced by the error saying why."""
        try:
            channel.send(result)
            self.blocks = []
        except EncodeError as exc:
            self.release_blocks(result)
            channel.send(self.failure(call, exc, skip_frames=None))

    def release_blocks(self, result: Result) -> None:
        """Give back the arena blocks of an answer that was never sent."""
        blocks, self.blocks = self.blocks, []
        if self.arena is not None:
            for name, offset in blocks:
                self.arena.free(name, offset)

    def mark_started(self, call_id: int) -> None:
        """Record, where the broker can read it after a crash, which call starts now.

        The broker sends calls ahead to a busy worker, which starts each as soon as it has
        answered the one before; if the worker then dies, that answer may die with it (in
        zmq's I/O thread). A write to this file outlives the process, so the broker knows
        which call was running and which never started.
        """
        if self.started_fd >= 0:
            os.pwrite(self.started_fd, call_id.to_bytes(8, "little"), 0)

    def release(self, message: Release) -> None:
        if self.arena is not None:
            for name, offset in message.blocks:
                self.arena.free(name, offset)
        for ident in message.refs:
            self.objects.pop(ident, None)

    def kept_object(self, ident: int) -> Any:
        try:
            return self.objects[ident]
        except KeyError:
            raise DecodeError(
                f"the object behind reference {ident} is no longer kept in environment "
                f"{self.env!r} (worker pid {os.getpid()}): it was released"
            ) from None

    def encoder(self) -> Encoder:
        return Encoder(
            self.by_value, self.pickle_protocol, self.arena, self.threshold, self.max_frame
        )

    def function(self, code: bytes) -> Callable[..., Any]:
        fn = self.functions.get(code)
        if fn is None:
            fn = load_function(code, self.env)
            self.functions[code] = fn
            if len(self.functions) > FUNCTION_CACHE_SIZE:
                self.functions.popitem(last=False)
        else:
            self.functions.move_to_end(code)
        return fn

    def run(self, call: Call) -> Result:
        name = call.name
        try:
            fn = self.function(call.code)
        except BaseException as exc:
            return self.failure(call, exc, skip_frames=0)
        try:
            self.mapper.attach(call.segments)
            args, kwargs = self.decoder.decode(call.payload, call.buffers)
        except DecodeError as exc:
            error = DecodeError(
                f"cannot load the arguments of {name} in environment {self.env!r}: {exc}"
                + (f"; add {exc.module} to the environment's requirements" if exc.module else ""),
                module=exc.module,
                env=self.env,
            )
            return self.failure(call, error, skip_frames=None)
        except BaseException as exc:
            return self.failure(call, exc, skip_frames=0)
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            return self.failure(call, exc, skip_frames=1)
        finally:
            del args, kwargs
        if call.keep:
            ident = self.next_object
            self.next_object += 1
            self.objects[ident] = value
            _flush()
            body = encode_kept(ident, type_name(value), _short_repr(value))
            return self.answer(call, True, body, kept=ident)
        encoder = self.encoder()
        try:
            body, buffers = encoder.encode(value)
        except EncodeError as exc:
            fix = "" if exc.what else ". Return plain data instead (lists, dicts, numpy arrays)"
            unsendable = EncodeError(
                f"the result of {name} in environment {self.env!r} (a {type_name(value)}) "
                f"cannot be sent back: {exc}{fix}",
                what="result",
            )
            return self.failure(call, unsendable, skip_frames=None)
        del value
        _flush()
        self.blocks = encoder.blocks
        return self.answer(call, True, body, buffers, encoder.segments)

    def answer(
        self,
        call: Call,
        ok: bool,
        body: bytes,
        buffers: Sequence[Any] = (),
        segments: Sequence[str] = (),
        kept: int = 0,
    ) -> Result:
        freed, self.freed = self.freed, []
        return Result(
            call_id=call.call_id,
            ok=ok,
            payload=body,
            segments=list(segments),
            freed=freed,
            kept=kept,
            buffers=buffers,
        )

    def failure(self, call: Call, exc: BaseException, skip_frames: Optional[int]) -> Result:
        """An error answer: type, message, traceback text, and the exception if it travels."""
        import traceback

        tb = exc.__traceback__
        for _ in range(skip_frames or 0):
            if tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
        lines = traceback.format_exception(type(exc), exc, tb if skip_frames is not None else None)
        header = f"Traceback from environment {self.env!r} (worker pid {os.getpid()}):\n"
        text = header + "".join(lines[1:] if lines[:1] == [_TB_HEAD] else lines)
        try:
            message = str(exc)
        except Exception:
            message = f"<unprintable {type(exc).__name__}>"
        message, text = _clip(message), _clip(text)  # the error travels in the header
        error_body: Optional[bytes] = None
        if isinstance(exc, Exception):  # SystemExit and the like must not end the caller
            try:
                error_body, error_buffers = Encoder(self.by_value, self.pickle_protocol).encode(exc)
            except Exception:
                error_body, error_buffers = None, []
            if error_buffers:
                error_body = None
        if error_body is not None and len(error_body) > ERROR_BYTES:
            error_body = None  # the caller gets a RemoteError with the text instead
        body, _ = Encoder(False, max_body=None).encode([type_name(exc), message, text, error_body])
        _flush()
        return self.answer(call, False, body)


_TB_HEAD = "Traceback (most recent call last):\n"
ERROR_BYTES = 4 * 1024 * 1024  # an error's message, traceback and pickled exception, each


def _clip(text: str, limit: int = ERROR_BYTES // 4) -> str:
    if len(text) <= limit:
        return text
    cut = f"\n... ({len(text) - limit:,} characters cut) ...\n"
    return text[: limit // 2] + cut + text[-limit // 2 :]


def _short_repr(value: Any, limit: int = 120) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type_name(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
