"""A raw pyzmq echo server: the floor that envrunner's calls are measured against.

Run as ``python zmq_echo.py ADDRESS``: binds a ROUTER to ``ADDRESS`` (an ``ipc://`` path) and
sends every message back to its sender as it came, frames untouched and never copied. It prints
``ready`` once bound, and exits when its standard input closes (its parent is gone).
"""

from __future__ import annotations

import sys
import threading

import zmq


def main() -> int:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.SNDHWM, 0)
    router.setsockopt(zmq.RCVHWM, 0)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(sys.argv[1])

    def watch_parent() -> None:
        sys.stdin.read()
        import os

        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    print("ready", flush=True)
    while True:
        frames = router.recv_multipart(copy=False)
        router.send_multipart(frames, copy=False)


if __name__ == "__main__":
    raise SystemExit(main())
