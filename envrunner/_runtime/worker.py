"""The worker: a long-lived interpreter of one environment that runs calls one at a time.

This module starts it (the command line, the key, the sockets, the watchdog and heartbeat
threads) and ends it; the serving loop is ``serving.Worker``.

May import: the standard library, zmq and the runtime's ``exits``, ``joining``, ``lifetime``,
``protocol``, ``serving``.

::

    broker (caller process)            worker main thread                 watchdog thread
    ───────────────────────            ──────────────────                 ───────────────
    spawns `python -m envrunner.worker`
      with the session key on an  ───► read key from the inherited       ─► blocks reading the
      inherited socket, keeps the      socket, connect DEALER (and the     same socket; EOF means
      other end open                   direct PAIR the caller bound: a     the caller is gone:
                                       HEARTBEAT on it first, proving the  kill the group, exit
                                       key there), send HELLO
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
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .exits import EXIT_NO_WELCOME
from .joining import EXIT_NO_CALLER, Joining
from .lifetime import end_group, read_key, read_key_file, watch_connection, watch_parent
from .protocol import Heartbeat, beat_identity
from .serving import WELCOME_TIMEOUT_MS, Channel, Worker

__all__ = ["EXIT_NO_WELCOME", "Channel", "Worker", "main"]


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
    if worker.direct is not None:  # first on it: the key proved on this channel (#20)
        worker.direct.send(Heartbeat(pid=os.getpid()))
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
        socket.setsockopt(zmq.IDENTITY, beat_identity(key, worker_id.encode()))  # (#20)
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


def _curve(socket: Any, server_key: str, client_key: str) -> None:
    """Make ``socket`` a CurveZMQ client of the broker whose public key is in ``server_key``."""
    import zmq.auth

    server_public, _ = zmq.auth.load_certificate(server_key)
    public, secret = zmq.auth.load_certificate(client_key)
    socket.curve_serverkey = server_public
    socket.curve_publickey = public
    socket.curve_secretkey = secret
