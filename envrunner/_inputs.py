"""Futures among a call's arguments, in the caller: who tells the scheduler they are done,
and who puts their values in.

::

    make_ticket: the encoder meets a future ─► a mark in its place; the call is deferred
      watch(ticket, futures, link)   one done-callback per future (whichever thread completes
                                     it): input_done(ticket, Failed | None) to the scheduler
    the scheduler: every input done, none failed ─► Resolve(ticket)
      resolve_now(ticket)            on the broker's thread, in the same pass: every answer as
                                     its worker sent it spliced into the call as encoded at
                                     submit (``_splice``: msgpack only, nothing unpickled), if
                                     all can go so and the call needs no other change
                                     (``Inputs.ready``) ─► the scheduler's ``resolved``
      resolve_later(ticket, post)    else, on the inputs thread (the broker never unpickles
                                     user data): the call encoded again, each answer that can
                                     travel as it is spliced in, the others' values decoded
                                     here and encoded again
                                     ─► Resolved(ticket, message, blocks, pin) (the broker's
                                     thread puts them in the call) | ResolveFailed(ticket, error)

A value goes from the environment that made it to the one that needs it without being loaded
in the caller (which may lack its packages): only an answer with buffers in shared memory (large
arrays), with by-value code bound for another Python, or a kept object's handle is decoded here
and encoded again.
A ``Ref`` (a result kept with ``keep=True``) is a handle, not the value: it goes back to the
worker that keeps the object, and the call runs there (in another environment it is an
``EncodeError`` that says to fetch it).

May import: the standard library, ``envrunner._actions``, ``_calls``, ``_commands``,
``_runtime``, ``_splice``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from ._actions import Failed, Ticket
from ._calls import RawResult, SameAs, UndecodedError
from ._commands import Command, Resolved, ResolveFailed
from ._runtime.errors import DependencyError

__all__ = ["Inputs", "failure_of", "resolve_later", "resolve_now", "watch"]


class Remake(Protocol):
    """Makes the call again with values in place of some of its futures (the others leave
    marks): message, arena blocks, pin, pinned what, the futures that left marks; and gives
    back blocks it took (a call that will not be sent)."""

    def __call__(
        self, fill: dict[int, Any]
    ) -> tuple[Any, list[list[Any]], bytes | None, str, list[Future[Any]]]: ...

    def release(self, blocks: list[list[Any]]) -> None: ...


@dataclass(eq=False)
class Inputs:
    """The futures a call was given, how to encode it again once they are done, whether its
    environment runs the caller's Python (``same``), and whether the call as encoded at submit
    can take its inputs' answers in place of its marks (``ready``: it holds no shared memory
    and no kept object's handle)."""

    futures: list[Future[Any]]
    remake: Remake
    same: bool
    ready: bool = False


class Listener(Protocol):
    """Who hears that an input of a waiting call is done (the runner's link)."""

    def input_done(self, ticket: Ticket, failed: Any) -> None: ...


def watch(ticket: Ticket, futures: list[Future[Any]], listener: Listener) -> None:
    """Tell ``listener.input_done(ticket, Failed | None)`` as each future is done (at once for
    one done).

    The callback holds the ticket weakly (the scheduler holds it while it waits): a done future
    the caller keeps does not keep every call it fed, and their messages, alive."""
    ticket.inputs_left = len(futures)
    done = _Told(weakref.ref(ticket), listener)
    for future in futures:
        future.add_done_callback(done)


class _Told:
    """One waiting call's done-callback, for each of its futures (two objects per call, not a
    closure's five: a graph of 100,000 pending calls is walked by the garbage collector)."""

    __slots__ = ("held", "listener")

    def __init__(self, held: weakref.ref[Ticket], listener: Listener) -> None:
        self.held = held
        self.listener = listener

    def __call__(self, future: Future[Any]) -> None:
        waiting = self.held()
        if waiting is not None:
            self.listener.input_done(waiting, failure_of(future))


def failure_of(future: Future[Any]) -> Failed | None:
    """How a done input failed, in words (its error is not decoded: a task's error is read
    only as far as its type and message), or None if it has a value."""
    if future.cancelled():
        return Failed(_label(future), "cancelled", future, cancelled=True)
    error = Future.exception(future, 0)  # the stand-in as it is: not decoded here
    if error is None:
        return None
    name = _label(future)
    if isinstance(error, DependencyError):  # it did not run either: name the one that failed
        # (and only the input it came through: a chain of 100,000 calls stays one line)
        return Failed(error.ancestor, error.error, error.failed, via=error.task)
    if isinstance(error, UndecodedError):
        return Failed(name, _words(error), future)
    text = str(error).split("\n", 1)[0]  # its first line (the whole error is the cause)
    return Failed(name, f"{type(error).__name__}: {text}" if text else type(error).__name__, future)


#: The largest encoded body (a call's, or an answer's) spliced on the broker's thread: the walk
#: takes time in proportion (about 0.05 s for a list of a million ints), and the broker's
#: thread also supervises every worker. Larger ones go to the inputs thread. (Buffer frames,
#: such as an array's bytes, are not walked: they do not count.)
HERE_BYTES = 64 * 1024


def resolve_now(ticket: Ticket) -> bool:
    """Put the inputs' answers in the call as their workers sent them, on the broker's thread,
    if every one can go so and the call needs no other change (``Inputs.ready``); False if not
    (then :func:`resolve_later`). Reads msgpack only (``_splice``): nothing is unpickled."""
    request = ticket.body
    inputs: Inputs = request.deferred
    message = request.message
    if not inputs.ready or len(message.payload) > HERE_BYTES:
        return False
    try:
        answers = []
        for future in inputs.futures:
            raw = _raw(future)
            if raw is None or len(raw[0]) > HERE_BYTES:
                return False
            answers.append(raw)
        request.message = _spliced(message, answers, inputs.same)
    except Exception:  # UnspliceableError, or what else splicing met (msgpack's depth limit):
        return False  # the inputs thread tries, and fails this call alone (not the broker)
    request.deferred = None
    return True


def _spliced(message: Any, answers: list[tuple[bytes, Any]], same: bool) -> Any:
    """The call ``message`` with ``answers`` in place of its marks (``_splice.splice``)."""
    from ._runtime.protocol import Call
    from ._splice import splice  # (msgpack: not at import)

    payload, frames = splice(message.payload, message.buffers, answers, same)
    return Call(  # (not dataclasses.replace: that reads the fields every time)
        call_id=message.call_id,
        name=message.name,
        code=message.code,
        payload=payload,
        segments=message.segments,
        keep=message.keep,
        buffers=frames,
    )


def resolve_later(ticket: Ticket, post: Callable[[Command], bool]) -> None:
    """Put the inputs' values in the call, on the inputs thread; report to the broker."""
    with _lock:
        global _thread
        _todo.append((ticket, post))
        _wake.set()
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_serve, name="envrunner-inputs", daemon=True)
            _thread.start()


# --------------------------------------------------------------------------- the inputs thread

_lock = threading.Lock()
_wake = threading.Event()
_todo: list[tuple[Ticket, Callable[[Command], bool]]] = []
_thread: threading.Thread | None = None


def _serve() -> None:
    while True:
        _wake.wait()
        with _lock:
            todo = list(_todo)
            _todo.clear()
            _wake.clear()
        for ticket, post in todo:
            post(_resolve(ticket))


def _resolve(ticket: Ticket) -> Command:
    request = ticket.body
    inputs: Inputs = request.deferred
    try:
        answers = {id(f): a for f in inputs.futures if (a := _answer(f, inputs.same))}
        values = {id(f): f.result() for f in inputs.futures if id(f) not in answers}
        message, blocks, pin, what, marked = inputs.remake(values)
    except BaseException as exc:  # a value that cannot be loaded here or sent on
        return ResolveFailed(ticket, exc)
    if marked:  # the answers as their workers sent them, in place of the marks
        try:
            message = _spliced(message, [answers[id(f)] for f in marked], inputs.same)
        except BaseException as exc:
            inputs.remake.release(blocks)  # never sent: its blocks go back
            if isinstance(exc, ValueError):  # msgpack's limits: say what to do
                flat = ValueError(
                    f"{ticket.name} in environment {ticket.env!r} cannot be given its inputs' "
                    f"values: {exc} (msgpack takes values nested at most about 1,000 levels "
                    "deep, the arguments' own lists included): return a flatter value"
                )
                flat.__cause__, exc = exc, flat
            return ResolveFailed(ticket, exc)
    # (the broker's thread puts them in the call: it may be freeing a cancelled call's blocks)
    return Resolved(ticket, message, blocks, pin, what)


def _answer(future: Future[Any], same: bool) -> tuple[bytes, Any] | None:
    """A done input's answer as its worker sent it, if it can go on undecoded (``_splice``);
    else None (its value is decoded here, and encoded again)."""
    from ._splice import UnspliceableError, check

    raw = _raw(future)
    if raw is None:
        return None
    try:
        check(raw[0], raw[1], same)
    except UnspliceableError:
        return None
    return raw


def _raw(future: Future[Any]) -> tuple[bytes, Any] | None:
    """A done input's answer as its worker sent it (body, buffers), or None if it is not at
    hand so (decoded already: its frames are gone; or not one of ours)."""
    raw = Future.result(future, 0)  # the raw answer: not decoded
    while isinstance(raw, SameAs):  # merged: the answer of the call it was merged into
        raw = Future.result(raw.ticket.body.future, 0)
    if not isinstance(raw, RawResult):
        return None
    return raw.payload, raw.buffers


def _label(future: Future[Any]) -> str:
    name, env = getattr(future, "name", None), getattr(future, "env", None)
    if name is None:
        return repr(future)
    return f"{name} in environment {env!r}"


def _words(failure: UndecodedError) -> str:
    """``ValueError: bad row``: the type and message of a task's error, from its encoded
    header (plain msgpack: the pickled exception itself is not loaded)."""
    from ._runtime.codec import Decoder

    try:
        type_name, message = Decoder(where="the caller").decode(failure.payload)[:2]
    except Exception:
        return "an error that could not be read"
    short = str(type_name).rpartition(".")[2]
    return f"{short}: {message}" if message else short
