"""Futures among a call's arguments, in the caller: who tells the scheduler they are done,
and who puts their values in.

::

    make_ticket: the encoder meets a future ─► a mark in its place; the call is deferred
      watch(ticket, futures, tell)   one done-callback per future (whichever thread completes
                                     it): input_done(ticket, Failed | None) to the scheduler
    the scheduler: every input done, none failed ─► Resolve(ticket)
      resolve_later(ticket, post)    on the inputs thread (never the broker's: values and
                                     errors are decoded by a thread that asks, and the
                                     broker never unpickles user data): each future's value,
                                     then the call encoded again with the values in place of
                                     the marks ─► Resolved(ticket) | ResolveFailed(ticket, error)

A value passes through the caller: decoded here, encoded for the environment that needs it.
A ``Ref`` (a result kept with ``keep=True``) is a handle, not the value: it goes back to the
worker that keeps the object, and the call runs there (in another environment it is an
``EncodeError`` that says to fetch it).

May import: the standard library, ``envrunner._actions``, ``_calls``, ``_commands``,
``_runtime``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ._actions import Failed, Ticket
from ._calls import UndecodedError
from ._commands import Command, Resolved, ResolveFailed
from ._runtime.errors import DependencyError

__all__ = ["Inputs", "failure_of", "resolve_later", "watch"]

#: Makes the call again with values in place of its futures: message, blocks, pin, pinned what.
Remake = Callable[[dict[int, Any]], tuple[Any, list[list[Any]], "bytes | None", str]]


@dataclass(eq=False)
class Inputs:
    """The futures a call was given, and how to encode it again once they are done."""

    futures: list[Future[Any]]
    remake: Remake


def watch(ticket: Ticket, futures: list[Future[Any]], tell: Callable[[Ticket, Any], None]) -> None:
    """Tell ``tell(ticket, Failed | None)`` as each future is done (at once for one done)."""
    ticket.inputs_left = len(futures)
    for future in futures:
        future.add_done_callback(lambda done: tell(ticket, failure_of(done)))


def failure_of(future: Future[Any]) -> Failed | None:
    """How a done input failed, in words (its error is not decoded: a task's error is read
    only as far as its type and message), or None if it has a value."""
    name = _label(future)
    if future.cancelled():
        return Failed(name, "cancelled", future, cancelled=True)
    error = Future.exception(future, 0)  # the stand-in as it is: not decoded here
    if error is None:
        return None
    if isinstance(error, DependencyError):  # it did not run either: name the one that failed
        # (and only the input it came through: a chain of 100,000 calls stays one line)
        return Failed(error.ancestor, error.error, error.failed, via=error.task)
    if isinstance(error, UndecodedError):
        return Failed(name, _words(error), future)
    text = str(error)
    return Failed(name, f"{type(error).__name__}: {text}" if text else type(error).__name__, future)


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
        values = {id(future): future.result() for future in inputs.futures}
        message, blocks, pin, what = inputs.remake(values)
    except BaseException as exc:  # a value that cannot be loaded here or sent on
        return ResolveFailed(ticket, exc)
    request.message, request.blocks, request.deferred = message, blocks, None
    ticket.pin, ticket.pinned_what = pin, what
    return Resolved(ticket)


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
