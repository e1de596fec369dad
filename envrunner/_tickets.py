"""A call made into a ticket for the scheduler, in the calling thread.

::

    fn, args, kwargs ─► encode_function, encode_arguments (``_encode``) ─► Call message
                     ─► CallFuture + CallRequest (what the broker sends and completes)
                     ─► Ticket (what the scheduler decides on: env, timeout, retries, pin)
    a future among the arguments ─► a mark in its place; the ticket is deferred: it waits in
                     the scheduler, and is encoded again with the values (``_inputs``)
    merge=True (cache=True) ─► a merge key: identical pending calls run once (``_graph``)

May import: the standard library, ``envrunner._actions``, ``_calls``, ``_encode``,
``_futures``, ``_inputs``, ``_manifest``, ``_options``, ``_runtime``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._actions import Ticket
from ._calls import CallRequest
from ._encode import encode_arguments, encode_function, pin
from ._futures import CallFuture, Link
from ._inputs import Inputs, watch

if TYPE_CHECKING:
    from ._manifest import EnvSpec
    from ._options import Options
    from ._runtime.shm import Arena

__all__ = ["make_ticket", "merge_key"]


def make_ticket(
    fn: Callable[..., Any],
    spec: EnvSpec,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    ids: Iterator[int],
    version: tuple[int, ...],
    options: Options,
    by_reference: bool,
    arena: Arena | None,
    threshold: int,
    max_message: int,
    link: Link,
) -> Ticket:
    """Encode ``fn(*args, **kwargs)`` for a worker of ``spec`` (Python ``version``).

    Args:
        ids: Where the call's id comes from.
        threshold: Buffers of at least this many bytes go into ``arena`` (0: none do).

    Raises:
        EncodeError: ``fn`` or an argument cannot be sent (the message names which).
    """
    env = spec.name
    same = version[:2] == tuple(sys.version_info[:2])
    code, name = encode_function(fn, same, env, version, by_reference)
    call_id = next(ids)
    encode = _Encoding(
        fn,
        name,
        code,
        env,
        args,
        kwargs,
        same,
        arena,
        threshold,
        max_message,
        call_id,
        options.keep,
    )
    message, blocks, pinned, pinned_what, futures = encode(None)
    # A call given futures is sent once they are done: as encoded now, their answers spliced
    # in place of its marks (``ready``), unless it holds blocks of shared memory or a kept
    # object's handle (then it is encoded again with the values, and its blocks go back now).
    ready = not blocks and pinned is None
    future: CallFuture[Any] = CallFuture(env, name, link)
    request = CallRequest(message, future, blocks)
    ticket = Ticket(
        call_id=call_id,
        env=env,
        name=name,
        timeout=options.timeout if options.timeout is not None else spec.timeout,
        retries=options.retries,
        pin=pinned,
        pinned_what=pinned_what,
        body=request,
    )
    merges = options.merge or (options.cache and options.merge is None)  # (Options.merges)
    if merges and not options.keep:
        ticket.merge_key = merge_key(ticket, message, blocks, futures)
        if ticket.merge_key is not None:
            request.inputs = futures  # their ids are in the key: none is reused meanwhile
    if futures:
        if not ready:
            request.blocks, ticket.pin, ticket.pinned_what = [], None, ""
            encode.release(blocks)
        request.deferred = Inputs(futures, encode, same, ready)
        ticket.deferred = True
        watch(ticket, futures, link)
    return ticket


@dataclass(slots=True, eq=False)
class _Encoding:
    """What encodes a call: once at submit, and again with its inputs' values if it must be
    (``Inputs.remake``). One object per pending call (a partial would be four)."""

    fn: Callable[..., Any]
    name: str
    code: bytes
    env: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    same: bool
    arena: Arena | None
    threshold: int
    max_message: int
    call_id: int
    keep: bool

    def __call__(
        self, fill: dict[int, Any] | None
    ) -> tuple[Any, list[list[Any]], bytes | None, str, list[Future[Any]]]:
        """The call's message with these values in place of its futures (the others, or all with
        ``fill=None``, leave marks), its arena blocks, the worker it is pinned to, and the futures
        that left marks (in the order of their marks' indices)."""
        from ._runtime.protocol import Call  # (msgpack: not at import)

        body, frames, encoder = encode_arguments(
            self.fn,
            self.name,
            self.env,
            self.args,
            self.kwargs,
            self.same,
            self.arena,
            self.threshold,
            self.max_message,
            fill,
        )
        try:
            pinned, pinned_what = pin(encoder.refs, self.env, self.name)
            message = Call(
                call_id=self.call_id,
                name=self.name,
                code=self.code,
                payload=body,
                segments=list(encoder.segments),
                keep=self.keep,
                buffers=frames,
            )
            futures = encoder.futures or []
            return message, [list(b) for b in encoder.blocks], pinned, pinned_what, futures
        except BaseException:
            encoder.release()
            raise

    def release(self, blocks: list[list[Any]]) -> None:
        """Give back arena blocks this encoding took, for a call that will not be sent."""
        if self.arena is not None:
            for segment, offset in blocks:
                self.arena.free(segment, offset)


def merge_key(
    ticket: Ticket, message: Any, blocks: list[list[Any]], futures: list[Future[Any]]
) -> bytes | None:
    """What makes two calls the same (``docs/workflows.md``): the environment, the encoded
    function and arguments (their bytes; a future counts as itself), timeout and retries.
    None for a call that cannot merge: one whose arguments went through shared memory (the
    bytes there are not compared) or that uses objects a worker keeps."""
    if blocks or ticket.pin is not None:
        return None
    import hashlib

    digest = hashlib.blake2b(digest_size=20)
    for part in (ticket.env.encode(), message.code, message.payload, *message.buffers):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    digest.update(repr((ticket.timeout, ticket.retries, [id(f) for f in futures])).encode())
    return digest.digest()
