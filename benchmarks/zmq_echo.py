"""A raw pyzmq echo server: the floor that envrunner's calls are measured against.

Run as ``python zmq_echo.py ADDRESS``: binds a ROUTER to ``ADDRESS`` (an ``ipc://`` path, or
``tcp://127.0.0.1:*``) and sends every message back to its sender as it came, frames untouched
and never copied. It prints ``ready ENDPOINT`` once bound, and exits when its standard input
closes (its parent is gone). With ``$ZMQ_ECHO_CURVE_SECRET`` (a Z85 secret key) set, the
ROUTER is a CurveZMQ server with that key: every message is encrypted, as envrunner's remote
workers' are.
"""

from __future__ import annotations

import os
import sys
import threading

import zmq


def main() -> int:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.SNDHWM, 0)
    router.setsockopt(zmq.RCVHWM, 0)
    router.setsockopt(zmq.LINGER, 0)
    secret = os.environ.get("ZMQ_ECHO_CURVE_SECRET")
    if secret:
        router.curve_server = True
        router.curve_secretkey = secret.encode("ascii")
    router.bind(sys.argv[1])
    endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()

    def watch_parent() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    print(f"ready {endpoint}", flush=True)
    while True:
        frames = router.recv_multipart(copy=False)
        router.send_multipart(frames, copy=False)


if __name__ == "__main__":
    raise SystemExit(main())
