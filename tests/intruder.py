"""A process of the same user that does not hold the session key, attacking a runner's sockets.

Run as ``python intruder.py [--detach] REPORT MODE ARGS...``. With ``--detach`` it forks and its
parent exits at once, so that the attacker is not a child of the process that started it (a
stranger to the runner, as another program of the user's would be); it prints its pid. It
writes what it saw as JSON to REPORT (``ready`` first, the rest when done), and runs until
killed or its mode ends.

Modes:
    pair PATH SECONDS         connect a PAIR to ``ipc://PATH`` (retrying every millisecond, so
                              it is there the moment the runner binds it) and count what it
                              receives for SECONDS (the report is kept up to date)
    identity PATH IDENT SECONDS
                              connect a DEALER under IDENT to ``ipc://PATH`` (retrying every
                              millisecond) and hold it for SECONDS
    connections PATH COUNT    open COUNT raw connections to the Unix socket PATH and hold them
    frames PATH COUNT SIZE    send one unsigned message of COUNT frames of SIZE bytes
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any


def report(path: Path, **state: Any) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state))
    temporary.replace(path)


def main(argv: list[str]) -> None:
    if argv[0] == "--detach":
        argv = argv[1:]
        child = os.fork()
        if child:
            print(child, flush=True)
            os._exit(0)
        os.setsid()
        quiet = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # let its starter's pipes close
            os.dup2(quiet, fd)
    out, mode, *args = argv
    path = Path(out)
    import zmq

    context = zmq.Context()
    if mode == "pair":
        peer = context.socket(zmq.PAIR)
        peer.setsockopt(zmq.RECONNECT_IVL, 1)
        peer.connect(f"ipc://{args[0]}")
        report(path, ready=True, received=0, nbytes=0)
        received = nbytes = 0
        deadline = time.monotonic() + float(args[1])
        while time.monotonic() < deadline:
            if peer.poll(50):
                frames = peer.recv_multipart()
                received += 1
                nbytes += sum(len(f) for f in frames)
                report(path, ready=True, received=received, nbytes=nbytes)
        report(path, ready=True, done=True, received=received, nbytes=nbytes)
    elif mode == "identity":
        peer = context.socket(zmq.DEALER)
        peer.setsockopt(zmq.IDENTITY, args[1].encode())
        peer.setsockopt(zmq.RECONNECT_IVL, 1)
        peer.connect(f"ipc://{args[0]}")
        report(path, ready=True)
        time.sleep(float(args[2]))
        report(path, ready=True, done=True)
    elif mode == "connections":
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # room for its own end
        held: list[socket.socket] = []
        for _ in range(int(args[1])):
            raw = socket.socket(socket.AF_UNIX)
            try:
                raw.connect(args[0])
            except OSError as exc:
                report(path, ready=True, opened=len(held), error=str(exc))
                break
            held.append(raw)
        else:
            report(path, ready=True, opened=len(held))
        time.sleep(600)
    elif mode == "frames":
        peer = context.socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 30_000)
        peer.setsockopt(zmq.SNDTIMEO, 5_000)  # refused at once: nowhere to queue it
        peer.connect(f"ipc://{args[0]}")
        block = zmq.Frame(b"\0" * int(args[2]))  # one buffer, sent COUNT times
        try:
            peer.send_multipart([block] * int(args[1]), copy=False)
            sent = True
        except zmq.Again:
            sent = False
        report(path, ready=True, tried=True, sent=sent)
        time.sleep(600)
    context.destroy(linger=0)


if __name__ == "__main__":
    main(sys.argv[1:])
