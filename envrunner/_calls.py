"""What travels with a call in the caller: its encoded request, its answer, a prepared pool.

May import: the standard library, ``envrunner._runtime``.

A :class:`CallRequest` is made by the calling thread (arguments already encoded) and rides on
the scheduler's ticket to the broker, which sends it. Its answer is a :class:`RawResult` or a
:class:`UndecodedError`, both decoded later, in the thread that asks for the future's value: a
result or an error never has its pickles loaded on the broker's thread (where a user module
imported by unpickling would hold up every other call).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._runtime.errors import DecodeError, EnvrunnerError, RemoteError, RemoteTraceback

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._runtime.protocol import Call

__all__ = [
    "CallRequest",
    "Prepared",
    "RawResult",
    "SameAs",
    "UndecodedError",
    "decode_error",
    "unmapped",
]


@dataclass(frozen=True)
class Prepared:
    """An environment ready to run workers: what the broker needs to start one."""

    name: str
    python: Path
    version: tuple[int, int, int]
    bin_dir: Path | None = None
    virtual_env: Path | None = None
    append_paths: tuple[str, ...] = ()
    environ: Mapping[str, str] = field(default_factory=dict)


@dataclass(eq=False)
class CallRequest:
    """A call's encoded message, its future, and the caller's arena blocks it lends.

    The broker alone changes ``sent`` (whether a worker holds its blocks) and ``blocks``.
    """

    message: Call
    future: Future[Any]
    blocks: list[list[Any]] = field(default_factory=list)
    sent: bool = False
    #: A call given futures among its arguments: puts their values in, once they are done
    #: (``_inputs.Deferred``; it replaces ``message`` and ``blocks``).
    deferred: Any = None
    #: The futures a merge key names by ``id``, kept alive as long as the call is: a freed
    #: future's id is reused by a new one, whose call would merge into this one.
    inputs: list[Future[Any]] | None = None


@dataclass(frozen=True)
class SameAs:
    """The answer of a call merged into an identical one (``ticket``, whose future holds the
    value): the merged call's future gives that future's value, decoded once."""

    ticket: Any


@dataclass(eq=False)
class RawResult:
    """A successful call's answer, decoded in the thread that asks for it."""

    payload: bytes
    buffers: list[Any]
    worker: bytes = b""
    pid: int = 0
    kept: int = 0
    fence: int = 0  # the worker's output before it: written before the value is given out


class UndecodedError(EnvrunnerError):
    """Stands in a future for the error a task raised until someone asks for it.

    ``CallFuture`` decodes it (:func:`decode_error`) in the asking thread and raises the
    task's own exception instead; this type is never seen by users.
    """

    def __init__(self, payload: bytes, env: str, name: str, fence: int = 0) -> None:
        super().__init__(f"{name} failed in environment {env!r}")
        self.fence = fence  # as RawResult.fence
        self.payload = payload
        self.env = env
        self.name = name


def decode_error(failure: UndecodedError) -> BaseException:
    """The exception a failed call's answer describes, with the remote traceback as its cause."""
    from ._runtime.codec import Decoder

    where = "the caller"
    try:
        type_name, message, text, blob = Decoder(where=where).decode(failure.payload)
    except Exception as exc:
        return EnvrunnerError(f"{failure.name} failed and its error could not be read: {exc}")
    error: BaseException | None = None
    if blob is not None:
        try:
            error = Decoder(where=where).decode(blob)
        except Exception:
            error = None  # its type cannot be imported here: a RemoteError says what it was
        if not isinstance(error, BaseException):
            error = None
    if error is None:
        error = RemoteError(type_name, message, failure.env)
    error.__cause__ = RemoteTraceback(text)
    return error


def unmapped(name: str, env: str, exc: BaseException) -> DecodeError:
    """The error of a call whose answer's shared memory cannot be mapped here: the call fails,
    the broker (or the calling thread) goes on."""
    return DecodeError(
        f"cannot map the shared memory that holds the result of {name} from environment "
        f"{env!r} ({exc}): was the shared-memory folder cleaned, or is this process out of file "
        "descriptors? Run it again, or pass shm_threshold=0 to the Runner to send values in "
        "frames instead",
        env=env,
    )
