"""The path of a call that uses the result cache or the call records.

::

    Runner.call / submit (cache=True on the task, or Runner(records=...))
      cached_call / cached_submit, in the calling thread:
        results.inputs(fn, args, kwargs)         identity + argument digests, before encoding
        the environment built (once per runner)  results.environment(resolved): its packages
        results.begin(...)                       the key; a hit, or a miss and why
      hit  ─► a CallFuture completed with the stored payload (decoded as a worker's answer);
              no worker, no broker
      miss ─► runner._ticket(...) with a _Recorded future in place of its CallFuture
              ─► runner._run (sync) / the broker (async), as an uncached call
    _Recorded, when the call ends (whichever thread ends it):
      a shared-memory block in the answer is copied out first (the caller may write to the
      arrays that map it), then results.finish_later(...): the writer thread stores the
      answer as the worker sent it and writes the record

The stored payload is the worker's answer itself, made self-contained: an answer whose
buffers came through shared memory has those buffers copied into frames of its own
(:func:`self_contained`), so a hit never needs a worker or a segment.

The runner is reached through :class:`Host`, the few members of it this path uses (this module
is imported by ``_runner``, so it cannot import it back).

May import: the standard library, msgpack, ``envrunner._broker`` (types), ``_callkey``, ``_calls``,
``_environments``, ``_futures``, ``_manifest``, ``_options``, ``_prepare``, ``_progress``,
``_results``, ``_runtime``, ``_splice``, ``_actions``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from ._calls import RawResult, UndecodedError
from ._futures import CallFuture, Link
from ._options import Options
from ._results import CallResults, PendingCall
from ._runtime import codec, formats
from ._runtime.errors import EnvrunnerError, RunnerClosedError
from ._splice import Rewrite

if TYPE_CHECKING:
    from ._actions import Ticket
    from ._broker import Broker
    from ._callkey import EnvFacts
    from ._environments import Resolved
    from ._manifest import EnvSpec, Manifest
    from ._progress import Progress
    from ._runtime.shm import Mapper

__all__ = ["Host", "cached_call", "cached_submit", "results_of", "self_contained"]

log = logging.getLogger("envrunner.cache")


class Host(Protocol):
    """What this path needs of the runner (``_runner.Runner``)."""

    manifest: Manifest
    records: bool | str | os.PathLike[str]
    remote_envs: frozenset[str]
    _results: CallResults | None
    _lock: threading.RLock
    _closed: bool
    _cancel_builds: threading.Event
    _mapper: Mapper

    @property
    def _link(self) -> Link: ...
    def _resolve(self, spec: EnvSpec) -> Resolved: ...
    def _progress(self) -> Progress: ...
    def _ticket(
        self,
        env: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        by_reference: bool = True,
    ) -> Ticket: ...
    def _run(self, ticket: Ticket) -> Any: ...
    def _ensure_broker(self) -> Broker: ...


def results_of(runner: Host) -> CallResults:
    """The runner's cache and records (made on first use)."""
    results = runner._results
    if results is None:
        with runner._lock:
            if runner._results is None:
                runner._results = CallResults(records=runner.records)
            results = runner._results
    return results


def cached_call(
    runner: Host, env: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Runner.call`` of a call that uses the cache or the records."""
    begun = _begin(runner, env, fn, args, kwargs, True)
    if isinstance(begun, Future):
        return begun.result()
    return runner._run(begun)


def cached_submit(
    runner: Host,
    env: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    by_reference: bool = True,
) -> Future[Any]:
    """``Runner.submit`` of a call that uses the cache or the records."""
    begun = _begin(runner, env, fn, args, kwargs, by_reference)
    if isinstance(begun, Future):
        return begun
    if not runner._ensure_broker().submit(begun):
        raise RunnerClosedError(f"{runner!r} was shut down")
    future: Future[Any] = begun.body.future
    return future


def _begin(
    runner: Host,
    env: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    by_reference: bool,
) -> Future[Any] | Ticket:
    """A hit's completed future, or the ticket of a call to run (its future records it)."""
    if runner._closed:
        raise RunnerClosedError(
            f"{runner!r} was shut down; make a new Runner (or leave the with block later)"
        )
    options: Options = getattr(fn, "__envrunner_options__", Options())
    if env in runner.remote_envs:
        if options.cache:
            raise EnvrunnerError(
                f"cache=True is not available for environment {env!r}, whose workers run on "
                "other machines (remote_envs): its packages are not known here; call it "
                "with .options(cache=False)"
            )
        return runner._ticket(env, fn, args, kwargs, by_reference)  # not recorded either
    started = time.time()
    results = results_of(runner)
    inputs = results.inputs(fn, args, kwargs, cache=options.cache)
    facts = _facts(runner, results, env)
    pending = results.begin(
        fn,
        inputs,
        facts,
        cache=options.cache,
        cache_errors=options.cache_errors,
        started=started,
    )
    if pending.reason is not None:
        runner._progress().done(env, pending.reason)
    key = pending.key.key if pending.key is not None and options.cache else None
    if pending.hit is not None:
        hit = _hit(runner._link, env, pending, results)
        hit.envrunner_key = key  # a call given this future is keyed by this call (_digest)
        return hit
    ticket = runner._ticket(env, fn, args, kwargs, by_reference)
    plain = ticket.body.future
    assert isinstance(plain, CallFuture)
    recorded = _Recorded(plain.env, plain.name, runner._link, results, pending, runner._mapper)
    recorded.withdraw_with(weakref.ref(ticket))  # cancel() takes it back from the queue
    recorded.envrunner_key = key
    ticket.body.future = recorded
    return ticket


def _facts(runner: Host, results: CallResults, env: str) -> EnvFacts:
    """The environment's facts; the first time, built (or found built) in this thread."""
    facts = results.known(env)
    if facts is None:
        from ._prepare import build_spec

        resolved = runner._resolve(runner.manifest[env])
        if resolved.key is not None:  # an interpreter used as it is needs no build
            build_spec(resolved, runner._progress(), runner._cancel_builds, runner.manifest.path)
        facts = results.environment(resolved)
    return facts


def _hit(link: Link, env: str, pending: PendingCall, results: CallResults) -> CallFuture[Any]:
    """A future completed with a stored answer, decoded (as a worker's) when asked for."""
    hit = pending.hit
    assert hit is not None
    future: CallFuture[Any] = CallFuture(env, pending.task.rpartition(".")[2], link)
    if hit.error:
        future.set_exception(UndecodedError(hit.payload, env, future.name))
        results.finish_later(pending, error=_error_type(hit.payload))
    else:
        future.set_result(RawResult(hit.payload, list(hit.buffers)))
        results.finish_later(pending)
    return future


def _error_type(payload: bytes) -> str:
    """The type's name in a task's encoded error (its pickle is not loaded)."""
    try:
        name = codec.Decoder(where="the caller").decode(payload)[0]
    except Exception:
        return "Exception"
    return str(name)


class _Recorded(CallFuture[Any]):
    """A call's future that hands its answer to the cache and records as the call ends.

    Whichever comes first tells: the broker completing it, the calling thread decoding a
    direct call's answer, a cancel.
    """

    def __init__(
        self,
        env: str,
        name: str,
        link: Link,
        results: CallResults,
        pending: PendingCall,
        mapper: Mapper | None,
    ) -> None:
        super().__init__(env, name, link)
        self._results = results
        self._pending: PendingCall | None = pending
        self._shared = mapper
        self._told = threading.Lock()

    def _tell(
        self, raw: RawResult | None = None, failure: bytes | None = None, error: Any = None
    ) -> None:
        with self._told:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            payload: bytes | None = None
            buffers: list[Any] = []
            if raw is not None and pending.cache == "miss":
                payload, buffers = self_contained(raw.payload, raw.buffers, self._shared)
            elif failure is not None and pending.cache == "miss" and pending.cache_errors:
                payload = failure
            self._results.finish_later(pending, payload=payload, buffers=buffers, error=error)
        except Exception as exc:  # the call's own answer stands
            log.warning("could not keep the result of %s: %s", pending.task, exc)

    def set_result(self, result: Any) -> None:
        self._tell(raw=result if isinstance(result, RawResult) else None)
        super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if isinstance(exception, UndecodedError):
            self._tell(failure=exception.payload, error=_error_type(exception.payload))
        else:
            self._tell(error=exception)
        super().set_exception(exception)

    def decoded(self, raw: Any) -> Any:
        if isinstance(raw, RawResult):
            self._tell(raw=raw)
        return super().decoded(raw)

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            self._tell(error=CancelledError())
        return cancelled


# --------------------------------------------------------------------------- self-contained


def self_contained(
    payload: bytes, buffers: Sequence[Any], mapper: Mapper | None
) -> tuple[bytes, list[Any]]:
    """An answer whose buffers are all frames: blocks of shared memory it points to are copied
    into frames of its own (an answer without any comes back as it is, uncopied).

    Raises:
        EnvrunnerError: A block is in shared memory and there is no mapper to read it.
    """
    marker = f"envrunner-{os.getpid()}-".encode()  # every segment a worker of ours writes
    body = payload if isinstance(payload, bytes) else bytes(payload)
    if marker not in body and not _out_of_band(body):
        return payload, list(buffers)
    return _Detach(buffers, mapper).answer(body)


def _out_of_band(payload: bytes) -> bool:
    """Whether the body itself travelled as a buffer (extension 50): a small outer body."""
    if len(payload) > 64:
        return False
    try:
        return bool(msgpack.unpackb(payload, ext_hook=lambda code, data: code == formats.BODY))
    except Exception:
        return False


class _Detach(Rewrite):
    """Rewrites a body's buffer references, recursively, so that none is in shared memory."""

    def __init__(self, buffers: Sequence[Any], mapper: Mapper | None) -> None:
        super().__init__(list(buffers))
        self.mapper = mapper

    def answer(self, payload: bytes) -> tuple[bytes, list[Any]]:
        return self.body(payload), self.frames

    def frame(self, ref: Any) -> Any:
        """A frame's index for a buffer reference (a block is copied into a new frame)."""
        if not isinstance(ref, list):
            return ref
        if self.mapper is None:
            raise EnvrunnerError("an answer points to shared memory, and this runner has none")
        name, offset, size = ref
        self.frames.append(bytes(self.mapper.block(name, offset, size)))
        return len(self.frames) - 1
