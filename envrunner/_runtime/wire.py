"""Sending and receiving a message's frames on a zmq socket, as cheaply as pyzmq allows.

A small message is one frame (signature + header): one ``send``/``recv`` of bytes, much faster
than pyzmq's multipart calls. Buffer frames, when there are any, are sent and received without
copies.

This module is part of the sealed worker runtime.
"""

from __future__ import annotations

from typing import Any, List, Sequence

__all__ = ["receive", "send"]


def send(socket: Any, frames: Sequence[Any], prefix: Sequence[bytes] = ()) -> None:
    """Send ``prefix`` (a ROUTER's identity) and the frames of one message."""
    if not prefix and len(frames) == 1:
        socket.send(frames[0])
    elif len(frames) == 1:
        socket.send_multipart([*prefix, frames[0]])
    else:
        socket.send_multipart([*prefix, *frames], copy=False)


def receive(socket: Any, flags: int = 0) -> List[Any]:
    """Receive one message's frames: the first as bytes, buffer frames as memoryviews."""
    import zmq

    frames: List[Any] = [socket.recv(flags)]
    while socket.getsockopt(zmq.RCVMORE):
        frames.append(socket.recv(copy=False).buffer)
    return frames
