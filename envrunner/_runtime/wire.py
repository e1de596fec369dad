"""Sending and receiving a message's frames on a zmq socket, as cheaply as pyzmq allows.

A small message is one frame (signature + header): one ``send``/``recv`` of bytes, much faster
than pyzmq's multipart calls. Buffer frames, when there are any, are sent and received without
copies.

This module is part of the sealed worker runtime.
"""

from __future__ import annotations

from typing import Any, List, Sequence

__all__ = ["receive", "send"]


#: zmq's flags and options as plain ints: pyzmq's are enums, and ``|``, ``&`` on them (as
#: ``send_multipart`` does per frame) go through ``enum``'s Python code.
SNDMORE = 2  # zmq.SNDMORE
EVENTS = 15  # zmq.EVENTS
POLLIN = 1  # zmq.POLLIN


def send(socket: Any, frames: Sequence[Any], prefix: Sequence[bytes] = ()) -> None:
    """Send ``prefix`` (a ROUTER's identity) and the frames of one message."""
    for part in prefix:
        socket.send(part, SNDMORE)
    if len(frames) == 1:
        socket.send(frames[0])
        return
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        socket.send(frame, 0 if index == last else SNDMORE, copy=False)


def receive(socket: Any, flags: int = 0) -> List[Any]:
    """Receive one message's frames: the first as bytes, buffer frames as memoryviews.

    Each frame says whether more follow (``Frame.more``): no ``getsockopt(RCVMORE)``, which
    pyzmq makes an enum for on every call (about half the cost of a small message).
    """
    frame = socket.recv(flags, copy=False)
    frames: List[Any] = [frame.bytes]
    while frame.more:
        frame = socket.recv(copy=False)
        frames.append(frame.buffer)
    return frames
