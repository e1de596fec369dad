"""A finished call's encoded answer put into another call's arguments, never decoded here.

::

    call given futures, encoded with marks      [arg, FUTURE[0], {"k": FUTURE[1]}] + frames
    each input's answer, as its worker sent it  body₀ + buffers₀, body₁ + buffers₁
    splice ─► [arg, body₀, {"k": body₁}] + frames + buffers₀ + buffers₁   (buffer indices moved)

The walk reads msgpack only: extension types stay opaque (``ExtType``), so no pickle is loaded
and no user module imported in the caller; the environment that needs the value decodes it, as
the caller would have (it may have packages the caller lacks). An answer that cannot travel
this way raises :class:`UnspliceableError` (the caller then decodes it and encodes the value
again): one that holds a kept object's handle, buffers in shared memory (their blocks are lent
to the caller alone), or a ``cloudpickle`` bound for another Python than the caller's (a worker
uses cloudpickle only when it runs the caller's Python, and by-value code loaded by another
Python version crashes it).

May import: the standard library, msgpack, ``envrunner._runtime``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from ._runtime import formats
from ._runtime.decoder import unpack_plain
from ._runtime.encoder import pack_small
from ._runtime.formats import FUTURE

__all__ = ["Rewrite", "UnspliceableError", "check", "splice"]


class UnspliceableError(Exception):
    """This answer must be decoded and encoded again (see the module)."""


def check(body: bytes, buffers: Sequence[Any], same: bool) -> None:
    """Whether an answer can go on undecoded to an environment (``same``: on the caller's
    Python).

    Raises:
        UnspliceableError: It cannot (see the module).
    """
    _Walk(list(buffers), (), 0, same, lent=False).value(body)


def splice(
    body: bytes, frames: Sequence[Any], answers: Sequence[tuple[bytes, Sequence[Any]]], same: bool
) -> tuple[bytes, list[Any]]:
    """``body`` with its future marks replaced by ``answers`` (mark ``i``: ``answers[i]``, a
    body and its buffers, each passed by :func:`check`), and the frames the result needs.

    Raises:
        UnspliceableError: An answer cannot travel undecoded.
    """
    walk = _Walk(list(frames), answers, 0, same)
    return walk.body(body), walk.frames


class Rewrite:
    """Rewrites an encoded body without decoding it: every buffer reference goes through
    :meth:`frame`, and the bodies nested in it (a pickle's plain value, an out-of-band body,
    a tuple's items) are rewritten the same way. ``frames`` are the buffers the result needs.

    A subclass says what a reference becomes (``frame``), and may take over an extension code
    first (``special``: return None to leave it to the common walk)."""

    def __init__(self, frames: list[Any]) -> None:
        self.frames = frames

    def body(self, data: Any) -> bytes:
        return pack_small(self.value(data))

    def value(self, data: Any) -> Any:
        return unpack_plain(data, self._ext)

    def frame(self, ref: Any) -> Any:
        """What a buffer reference (a frame's index, or a block ``[segment, offset, size]``)
        becomes."""
        raise NotImplementedError

    def special(self, code: int, data: bytes) -> Any:
        return None

    def _ext(self, code: int, data: bytes) -> Any:
        special = self.special(code, data)
        if special is not None:
            return special
        if code == formats.NDARRAY:
            dtype, shape, order, ref = unpack_plain(data)
            return msgpack.ExtType(code, pack_small([dtype, shape, order, self.frame(ref)]))
        if code in (formats.PICKLE, formats.CLOUDPICKLE):
            name, pickled, refs, plain = unpack_plain(data)
            if plain is not None:
                plain = self.body(plain)
            refs = [self.frame(ref) for ref in refs]
            return msgpack.ExtType(code, pack_small([name, pickled, refs, plain]))
        if code == formats.BODY:
            (ref,) = unpack_plain(data)
            index = self.frame(ref)
            self.frames[index] = self.body(self.frames[index])
            return msgpack.ExtType(code, pack_small([index]))
        if code in (formats.TUPLE, formats.SET, formats.FROZENSET):
            return msgpack.ExtType(code, self.body(data))
        return msgpack.ExtType(code, data)  # no buffer inside


class _Walk(Rewrite):
    """Splices one body: its buffer references moved by ``offset`` (the place of its buffers
    among ``frames``), future marks replaced (only in the outer body: ``answers``)."""

    def __init__(
        self,
        frames: list[Any],
        answers: Sequence[tuple[bytes, Sequence[Any]]],
        offset: int,
        same: bool,
        lent: bool = True,
    ) -> None:
        super().__init__(frames)
        self.answers = answers
        self.offset = offset
        self.same = same
        #: Whether it is the call's own body (which may hold blocks of shared memory the call
        #: was lent), not an answer's.
        self.lent = lent

    def frame(self, ref: Any) -> Any:
        if isinstance(ref, int):
            return ref + self.offset
        if not self.lent:  # an answer's block: lent to the caller only
            raise UnspliceableError("shared memory")
        return ref  # the call's own arena block, as it was

    def special(self, code: int, data: bytes) -> Any:
        if code == FUTURE:
            if not self.lent:
                raise UnspliceableError("a mark inside an answer")
            (index,) = unpack_plain(data)
            body, buffers = self.answers[index]
            inner = _Walk(self.frames, (), len(self.frames), self.same, lent=False)
            self.frames.extend(buffers)
            return inner.value(body)  # the answer's value, in place of the mark
        if code in (formats.KEPT, formats.REF) or (code == formats.CLOUDPICKLE and not self.same):
            raise UnspliceableError("a kept object, or by-value code for another Python")
        if code == formats.BODY and not isinstance(unpack_plain(data)[0], int):
            raise UnspliceableError("a body in shared memory")
        return None
