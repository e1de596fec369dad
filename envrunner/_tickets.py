"""A call made into a ticket for the scheduler, in the calling thread.

::

    fn, args, kwargs ─► encode_function, encode_arguments (``_encode``) ─► Call message
                     ─► CallFuture + CallRequest (what the broker sends and completes)
                     ─► Ticket (what the scheduler decides on: env, timeout, retries, pin)

May import: the standard library, ``envrunner._actions``, ``_calls``, ``_encode``,
``_futures``, ``_manifest``, ``_options``, ``_runtime``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._actions import Ticket
from ._calls import CallRequest
from ._encode import encode_arguments, encode_function, pin
from ._futures import CallFuture, Link

if TYPE_CHECKING:
    from ._manifest import EnvSpec
    from ._options import Options
    from ._runtime.shm import Arena

__all__ = ["make_ticket"]


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
        ids: Where the call's id comes from (taken once it is encoded).
        threshold: Buffers of at least this many bytes go into ``arena`` (0: none do).

    Raises:
        EncodeError: ``fn`` or an argument cannot be sent (the message names which).
    """
    import sys

    from ._runtime.protocol import Call  # (msgpack: not at import)

    env = spec.name
    same = version[:2] == tuple(sys.version_info[:2])
    code, name = encode_function(fn, same, env, version, by_reference)
    body, frames, encoder = encode_arguments(
        fn, name, env, args, kwargs, same, arena, threshold, max_message
    )
    try:
        pinned, pinned_what = pin(encoder.refs, env, name)
        call_id = next(ids)
        message = Call(
            call_id=call_id,
            name=name,
            code=code,
            payload=body,
            segments=list(encoder.segments),
            keep=options.keep,
            buffers=frames,
        )
        future: CallFuture[Any] = CallFuture(env, name, link)
        request = CallRequest(message, future, [list(b) for b in encoder.blocks])
        return Ticket(
            call_id=call_id,
            env=env,
            name=name,
            timeout=options.timeout if options.timeout is not None else spec.timeout,
            retries=options.retries,
            pin=pinned,
            pinned_what=pinned_what,
            body=request,
        )
    except BaseException:
        encoder.release()
        raise
