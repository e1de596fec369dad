"""A call's life in the caller: what is submitted, what comes back, and how errors read.

May import: the standard library, ``envrunner._runtime``.

A :class:`PendingCall` is made by the caller's thread (arguments already encoded) and handed to
the broker, or run by the caller's thread itself on a worker it checked out. Its answer is a
:class:`RawResult` (decoded later, in the thread that asks for it) or an exception made here:
a remote error keeps the worker's traceback as ``__cause__`` whether or not its type can be
rebuilt in the caller.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._runtime.codec import Decoder
from ._runtime.errors import EnvrunnerError, RemoteError, RemoteTraceback
from ._runtime.protocol import Call

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._workers import WorkerHandle

__all__ = [
    "SHUTDOWN_GRACE",
    "START_FAILURE_LIMIT",
    "PendingCall",
    "PoolConfig",
    "Prepared",
    "RawResult",
    "remote_error",
]

#: Worker starts that may fail in a row before a pool gives up (and fails its calls).
START_FAILURE_LIMIT = 3
#: Seconds workers get to leave after SHUTDOWN before they are killed.
SHUTDOWN_GRACE = 5.0


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


@dataclass(frozen=True)
class PoolConfig:
    """How one environment's workers are run."""

    workers: int = 1
    idle_timeout: float | None = None
    max_calls: int | None = None
    local: bool = True  # False: its workers all run on other machines
    window: int = 2  # calls in flight per busy worker while others wait (1: one at a time)

    @staticmethod
    def window_for(workers: int) -> int:
        """How many calls a busy worker may hold (running, then sent ahead).

        Eight with one worker, where the calls have nowhere else to go; two with several, where
        a call sent ahead to a worker that turns out slow could have run on another that came
        free (head-of-line blocking). A call sent ahead can no longer be cancelled, so the
        window is not deeper than the throughput needs: noop calls through one worker went
        5,000/s at 2, 6,000-8,500 at 4, 8,000-12,600 at 8 and no better at 16
        (benchmarks/run.py, pipelined)."""
        return 8 if workers == 1 else 2


@dataclass(eq=False)
class PendingCall:
    """A call from submission to its answer."""

    call_id: int
    env: str
    name: str
    code: bytes
    payload: bytes
    buffers: list[Any]
    timeout: float | None
    future: Future[Any]
    segments: list[str] = field(default_factory=list)
    blocks: list[list[Any]] = field(default_factory=list)  # the caller's arena blocks it lends
    keep: bool = False
    pin: bytes | None = None  # the worker keeping the objects its arguments refer to
    pinned_what: str = ""
    retries: int = 0  # runs left after a worker crash
    worker: WorkerHandle | None = None
    deadline: float | None = None
    finished: bool = False

    def message(self) -> Call:
        """The CALL message that asks a worker to run it."""
        return Call(
            call_id=self.call_id,
            name=self.name,
            code=self.code,
            payload=self.payload,
            segments=self.segments,
            keep=self.keep,
            buffers=self.buffers,
        )


@dataclass(eq=False)
class RawResult:
    """A successful call's answer, decoded in the thread that asks for it."""

    payload: bytes
    buffers: list[Any]
    worker: bytes = b""
    pid: int = 0
    kept: int = 0


def remote_error(call: PendingCall, payload: bytes) -> BaseException:
    """The exception a failed call's answer describes, with the remote traceback as its cause."""
    try:
        type_name, message, text, blob = Decoder(where="the caller").decode(payload)
    except Exception as exc:
        return EnvrunnerError(f"{call.name} failed and its error could not be read: {exc}")
    error: BaseException | None = None
    if blob is not None:
        try:
            error = Decoder(where="the caller").decode(blob)
        except Exception:
            error = None  # its type cannot be imported here: a RemoteError says what it was
        if not isinstance(error, BaseException):
            error = None
    if error is None:
        error = RemoteError(type_name, message, call.env)
    error.__cause__ = RemoteTraceback(text)
    return error
