"""A call made ready for a worker, in the calling thread: its function and its arguments.

::

    fn ─► by reference / by value / as source (cached per function) ─► code bytes, name
    args, kwargs ─► Encoder (msgpack + frames; arrays into the shared-memory arena)
                 ─► body, frames, blocks lent, Refs used ─► the worker they pin the call to

May import: the standard library, ``envrunner._runtime``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._runtime.errors import EncodeError

if TYPE_CHECKING:
    from ._runtime.codec import Encoder
    from ._runtime.shm import Arena

__all__ = ["encode_arguments", "encode_function", "parameter_names", "pin"]

#: Encoded functions given to Runner.call/submit without a task, by function (weakly).
_codes: weakref.WeakKeyDictionary[Any, dict[tuple[bool, bool], tuple[bytes, str]]] = (
    weakref.WeakKeyDictionary()
)


def encode_function(
    fn: Callable[..., Any], same: bool, env: str, version: tuple[int, ...], by_reference: bool
) -> tuple[bytes, str]:
    """A function's encoding for a worker, and its name for messages (cached per function)."""
    cache: dict[tuple[bool, bool], tuple[bytes, str]] | None = getattr(
        fn, "__envrunner_codes__", None
    )
    if cache is None:
        try:
            cache = _codes.setdefault(fn, {})
        except TypeError:  # not weak-referenceable (a builtin method, say): no cache
            cache = {}
    found = cache.get((same, by_reference))
    if found is not None:
        return found
    from ._runtime.code import describe, encode_function

    target = f"environment {env!r} (Python {'.'.join(map(str, version[:2]))})"
    found = (encode_function(fn, same, target, by_reference), describe(fn) + "()")
    cache[same, by_reference] = found
    return found


def encode_arguments(
    fn: Callable[..., Any],
    name: str,
    env: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    same: bool,
    arena: Arena | None,
    threshold: int,
    max_frame: int | None = None,
    fill: dict[int, Any] | None = None,
) -> tuple[bytes, list[Any], Encoder]:
    """Encode a call's arguments: body, frames, and the encoder (its blocks, refs, futures).

    A future among them leaves a mark in its place (``encoder.futures`` lists them), or, with
    ``fill``, its value (by ``id(future)``).

    Raises:
        EncodeError: Naming the argument that cannot be sent, and why.
    """
    from ._runtime.codec import Encoder, type_name

    encoder = Encoder(by_value=same, arena=arena, threshold=threshold, max_frame=max_frame)
    encoder.futures, encoder.fill = [], fill
    try:
        body, frames = encoder.encode([list(args), kwargs])
        return body, frames, encoder
    except EncodeError as exc:
        first = exc
    parameters = parameter_names(fn)
    labelled: list[tuple[str, Any]] = []
    for index, value in enumerate(args):
        label = f"argument {index + 1}"
        if index < len(parameters):
            label += f" ({parameters[index]})"
        labelled.append((label, value))
    labelled += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
    for label, value in labelled:
        alone = Encoder(by_value=same, max_frame=max_frame)
        alone.futures, alone.fill = [], fill
        try:
            alone.encode(value)
        except EncodeError as exc:
            raise EncodeError(
                f"{label} of {name}, a {type_name(value)}, cannot be sent to environment "
                f"{env!r}: {exc}",
                what=label,
            ) from exc
    raise EncodeError(
        f"the arguments of {name} cannot be sent to environment {env!r}: {first}"
    ) from first


def pin(refs: list[Any], env: str, name: str) -> tuple[bytes | None, str]:
    """The worker a call must run on: the one keeping the objects its arguments refer to."""
    if not refs:
        return None, ""
    for ref in refs:
        if ref.env != env:
            raise EncodeError(
                f"{name} in environment {env!r} was given {ref!r}, an object kept in "
                f"environment {ref.env!r}: a reference works only in its own environment. "
                "Pass ref.fetch() to send the value instead"
            )
    workers = {ref.worker for ref in refs}
    if len(workers) > 1:
        raise EncodeError(
            f"{name} was given references kept by {len(workers)} different workers of "
            f"environment {env!r}; a call runs on one worker: fetch() all but one of them"
        )
    return workers.pop(), repr(refs[0])


def parameter_names(fn: Callable[..., Any], keyword: bool = False) -> list[str]:
    import inspect

    try:
        signature = inspect.signature(getattr(fn, "__envrunner_fn__", fn))
    except (TypeError, ValueError):
        return []
    kinds: set[inspect._ParameterKind] = {
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    }
    if keyword:
        kinds.add(inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in signature.parameters.values() if p.kind in kinds]
