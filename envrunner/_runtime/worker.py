"""The worker: a long-lived interpreter of one environment that runs calls one at a time.

::

    broker (caller process)            worker main thread                 watchdog thread
    ───────────────────────            ──────────────────                 ───────────────
    spawns `python -m envrunner.worker`
      with the session key on an  ───► read key from the inherited       ─► blocks reading the
      inherited socket, keeps the      socket, connect DEALER (and the     same socket; EOF means
      other end open                   direct PAIR the caller bound),      the caller is gone:
                                       send HELLO                          kill the group, exit
                                  ◄─── HELLO
    WELCOME (cwd, sys.path) ──────────► chdir, extend sys.path, start the heartbeat
                                        thread (a DEALER of its own)
    CALL ─────────────────────────────► (control) write its id to the --started file; load the
      (control, or direct from a        function (cached), decode args, run, flush
      calling thread)                   stdout/stderr, encode result
                                  ◄─── RESULT (value, or the error with its traceback)
    RELEASE ──────────────────────────► drop kept objects, free arena blocks
    SHUTDOWN ─────────────────────────► kill what tasks left in the process group, exit 0

stdout and stderr are pipes the broker reads line by line; they are flushed before every RESULT
so that a call's output reaches the caller before its result does. faulthandler writes native
crash tracebacks to stderr, which the broker quotes when it reports the crash.

Run as ``python -m envrunner.worker --connect ADDR --id ID --key-fd FD --env NAME``.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import __version__, shm, wire
from .code import load_function
from .codec import Decoder, Encoder, encode_kept, type_name
from .errors import DecodeError, EncodeError
from .joining import EXIT_NO_CALLER, Joining
from .lifetime import end_group, read_key, read_key_file, watch_connection, watch_parent
from .protocol import (
    PROTOCOL_VERSION,
    Call,
    Heartbeat,
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

EXIT_NO_WELCOME = 76  # the broker never answered the hello
WELCOME_TIMEOUT_MS = 60_000
FUNCTION_CACHE_SIZE = 256


def _curve(socket: Any, server_key: str, client_key: str) -> None:
    """Make ``socket`` a CurveZMQ client of the broker whose public key is in ``server_key``."""
    import zmq.auth

    server_public, _ = zmq.auth.load_certificate(server_key)
    public, secret = zmq.auth.load_certificate(client_key)
    socket.curve_serverkey = server_public
    socket.curve_publickey = public
    socket.curve_secretkey = secret


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


class _Arguments:
    """The worker's command line (read by hand: argparse costs a worker's start 2 ms)."""

    connect = direct = id = key_file = curve_server_key = curve_client_key = env = started = ""
    max_message = key_fd = -1
    start_timeout = WELCOME_TIMEOUT_MS / 1000


def _arguments(argv: List[str]) -> _Arguments:
    args = _Arguments()
    known = {
        "--connect",
        "--direct",
        "--started",
        "--id",
        "--key-file",
        "--curve-server-key",
        "--curve-client-key",
        "--env",
        "--max-message",
        "--key-fd",
        "--start-timeout",
        "--append-path",  # applied by the entry module, before the runtime is imported
    }
    if len(argv) % 2:
        raise SystemExit(f"python -m envrunner.worker: options come in pairs, got {argv}")
    for flag, value in zip(argv[::2], argv[1::2]):
        if flag not in known:
            raise SystemExit(f"python -m envrunner.worker: unknown option {flag}")
        name = flag[2:].replace("-", "_")
        if name in ("max_message", "key_fd"):
            setattr(args, name, int(value))
        elif name == "start_timeout":
            args.start_timeout = float(value)
        elif name != "append_path":
            setattr(args, name, value)
    for required in ("connect", "id", "env"):
        if not getattr(args, required):
            raise SystemExit(f"python -m envrunner.worker: --{required} is required")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else list(argv))
    sys.argv = sys.argv[:1]

    faulthandler.enable(all_threads=False)  # the crashing thread: the others are ours
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    remote = args.key_fd < 0
    if remote:
        key = read_key_file(args.key_file)
    else:
        key = read_key(args.key_fd)
        watch_parent(args.key_fd)

    import zmq

    context = zmq.Context()
    control = context.socket(zmq.DEALER)
    control.setsockopt(zmq.IDENTITY, args.id.encode())
    control.setsockopt(zmq.LINGER, 1000)
    control.setsockopt(zmq.MAXMSGSIZE, args.max_message)
    curve = (args.curve_server_key, args.curve_client_key)
    if args.curve_server_key:
        _curve(control, *curve)
    leaving = threading.Event()
    watching = None
    joining = None
    if remote:
        control.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        control.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
        joining = Joining(control, args.connect, args.start_timeout, args.curve_client_key)
    control.connect(args.connect)
    direct = None
    if args.direct:
        direct = context.socket(zmq.PAIR)
        direct.setsockopt(zmq.LINGER, 1000)
        direct.setsockopt(zmq.MAXMSGSIZE, args.max_message)
        direct.connect(args.direct)
    worker = Worker(
        Channel(control, key, args.id.encode()),
        Channel(direct, key, args.id.encode(), "direct") if direct is not None else None,
        args.id,
        args.env,
    )
    if args.max_message > 0:
        worker.max_frame = args.max_message  # the broker's limit is the same as ours
    if args.started:
        worker.started_fd = os.open(args.started, os.O_WRONLY)
    if joining is not None:
        worker.wait_welcome = _joined(joining)
    welcome = worker.hello()
    if joining is not None:
        joining.close()
        watching = watch_connection(control, leaving)
    worker.settle(welcome)
    interval = float(welcome.options.get("heartbeat") or 0)
    stop = threading.Event()
    beating = None
    if interval:
        beating = _heartbeat(context, args.connect, args.id, key, interval, stop, curve)
    code = worker.serve()
    leaving.set()
    if watching is not None:
        control.disable_monitor()
        watching.join(5)
    stop.set()
    if beating is not None:
        beating.join(interval + 1)
    for socket in (control, direct):
        if socket is not None:
            socket.close()
    context.term()
    if not remote:
        end_group()
    return code


def _joined(joining: Joining) -> Callable[[], bool]:
    """The wait for the welcome of a worker on another machine: it says what it sees, and
    exits with ``EXIT_NO_CALLER`` (after saying why) if no caller answers in time."""

    def wait() -> bool:
        if joining.wait():
            return True
        os._exit(EXIT_NO_CALLER)

    return wait


def _heartbeat(
    context: Any,
    address: str,
    worker_id: str,
    key: bytes,
    interval: float,
    stop: threading.Event,
    curve: Tuple[str, str] = ("", ""),
) -> threading.Thread:
    """Say "alive" every ``interval`` seconds from a thread of its own, with a socket of its own.

    A worker stuck in native code that holds the GIL, or a stopped process, stops saying it,
    and the broker treats it as hung.
    """
    import zmq

    def beat() -> None:
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.IDENTITY, f"{worker_id}.hb".encode())
        socket.setsockopt(zmq.LINGER, 0)
        if curve[0]:
            _curve(socket, *curve)
        socket.connect(address)
        channel = Channel(socket, key, f"{worker_id}.hb".encode())
        pid = os.getpid()
        try:
            while not stop.is_set():
                channel.send(Heartbeat(pid=pid))
                stop.wait(interval)
        finally:
            socket.close()

    thread = threading.Thread(target=beat, name="envrunner-heartbeat", daemon=True)
    thread.start()
    return thread
