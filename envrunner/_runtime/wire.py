"""Sending and receiving a message's frames on a zmq socket, as cheaply as pyzmq allows.

A small message is one frame (signature + header): one ``send``/``recv`` of bytes, much faster
than pyzmq's multipart calls. Buffer frames, when there are any, are sent and received without
copies.

This module is part of the sealed worker runtime.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

__all__ = ["receive", "send"]


#: zmq's flags and options as plain ints: pyzmq's are enums, and ``|``, ``&`` on them (as
#: ``send_multipart`` does per frame) go through ``enum``'s Python code.
SNDMORE = 2  # zmq.SNDMORE
RCVMORE = 13  # zmq.RCVMORE
EVENTS = 15  # zmq.EVENTS
POLLIN = 1  # zmq.POLLIN

#: Whether a received frame says if more follow (pyzmq's cffi backend never sets it).
_frames_say_more: Optional[bool] = None


def send(socket: Any, frames: Sequence[Any], prefix: Sequence[bytes] = ()) -> None:
    """Send ``prefix`` (a ROUTER's identity) and the frames of one message."""
    if len(frames) == 1:  # the common case: one small frame, copied
        for part in prefix:
            socket.send(part, SNDMORE)
        socket.send(frames[0])
        return
    parts = [*prefix, *frames]
    last = len(parts) - 1
    for index, part in enumerate(parts):
        socket.send(part, 0 if index == last else SNDMORE, copy=index >= len(prefix))


def receive(socket: Any, flags: int = 0) -> List[Any]:
    """Receive one message's frames: the first as bytes, buffer frames as memoryviews.

    Each frame says whether more follow (``Frame.more``): no ``getsockopt(RCVMORE)``, which
    pyzmq makes an enum for on every call (about half the cost of a small message). pyzmq's
    cffi backend (PyPy) does not set ``Frame.more``: there the socket is asked.
    """
    global _frames_say_more
    if _frames_say_more is None:  # (pyzmq imported when first needed)
        import zmq

        _frames_say_more = not any("cffi" in cls.__module__ for cls in zmq.Frame.__mro__)
    frame = socket.recv(flags, copy=False)
    frames: List[Any] = [frame.bytes]
    while frame.more if _frames_say_more else socket.getsockopt(RCVMORE):
        frame = socket.recv(copy=False)
        frames.append(frame.buffer)
    return frames
