"""Values between environments: msgpack with extension types, buffers out of band.

Plain data (None, bool, int, float, str, bytes, list, dict) is msgpack; what msgpack lacks travels
as an extension type whose payload is again msgpack, so every type round-trips exactly and loads
under any Python and numpy version:

====  ==============================================================
code  payload
====  ==============================================================
1     tuple: the items
2     set: the items
3     frozenset: the items
4     complex: [real, imag]
5     int beyond 64 bits: its decimal text
10    datetime: [y, m, d, H, M, S, us, fold, tz]
11    date: [y, m, d]
12    time: [H, M, S, us, fold, tz]
13    timedelta: [days, seconds, microseconds]
14    Decimal: its text
15    UUID: its 16 bytes
16    pathlib path: [class name, text]
20    numpy array: [dtype, shape, order, buffer]
21    numpy scalar: [dtype, raw bytes]
30    pickle: [type name, pickle bytes, [buffer, ...], plain value (packed as a body) or None]
31    cloudpickle (same Python minor version only): as 30
40    a reference the caller passes back to the worker that holds the object: [id]
41    a reference to an object kept in the worker: [id, type name, repr]
42    a future among a call's arguments: [its index]; the caller's own mark, never sent (the
      call waits for the future and is encoded again with its value in that place)
50    the whole body, out of band: [buffer] (a body above ``max_body`` bytes)
====  ==============================================================

An instance of a subclass of a built-in type (``torch.__version__`` is a ``str`` subclass) also
carries its *plain value* (``str(obj)``): a receiver that cannot import the subclass gets that.

A *buffer* is the index of a frame sent after the body, or, for a large buffer sent through
shared memory, ``[segment, offset, size]`` (see ``shm.py``).

Large plain values (70 MB of ``bytes``, a long ``str``, a list of millions of floats) make a
large body; a body above ``max_body`` bytes (16 MiB, well under the protocol's header limit)
travels out of band as one buffer (through shared memory, or in a frame of its own), and the
message carries a small body that points to it (extension 50). A buffer sent in a frame may not
exceed ``max_frame`` bytes (the receiver's ``MAXMSGSIZE``, which drops a larger frame unread):
the encoder refuses it with an :class:`EncodeError` that names the limit and the way around it.
When shared memory is full (``ENOSPC``), buffers go in frames instead.

``tz`` is None, ``["offset", seconds, name]`` or ``["zone", key]`` (a ``zoneinfo`` key).
A dtype is ``dtype.str`` (``"<f8"``) or, for structured dtypes, ``dtype.descr``.

Every array buffer travels outside the body, so it is never copied into it: in a frame of its own,
or, from ``threshold`` bytes up when the two ends share a machine, through a shared-memory arena
(one copy in on the sending side, none on the receiving side). Objects exposing
``__array_interface__`` travel as numpy arrays; ``bytearray`` and ``memoryview`` arrive as
``bytes`` (msgpack packs every byte buffer the same way). Anything else goes by pickle
(protocol 5, its buffers out of band too), or by cloudpickle when both ends run the same Python
minor version.

The encoder is ``encoder.py``, the decoder ``decoder.py``, the codes and limits ``formats.py``
(import the codes from there); this module is the face of the first two, and what the rest of
the package imports.

May import: the runtime's ``decoder``, ``encoder``, ``formats``.

This module is part of the sealed worker runtime: standard library, msgpack, cloudpickle
(imported on first use) and numpy (only if the value or the process already has it).
"""

from __future__ import annotations

from .decoder import Decoder
from .encoder import Encoder, encode_kept
from .formats import type_name

__all__ = ["Decoder", "Encoder", "encode_kept", "type_name"]
