"""A runner's side of cached results and call records: what the core calls around each call.

May import: the standard library, ``envrunner._cache``, ``envrunner._callkey``,
``envrunner._digest``, ``envrunner._callrecords``.

One :class:`CallResults` per runner; each call goes through it twice::

    caller thread                                 when the call ends (any thread)
    -------------                                 ------------------------------
    inputs = results.inputs(fn, args, kwargs,     (at submission: identity, argument digests)
                            cache=...)
    ... once the environment is built:
    pending = results.begin(fn, inputs, facts,
                            cache=...)
      key = key_for(inputs, facts)
      hit = cache.get(key)       (cache on)
      miss after an earlier store: log why
    pending.hit is not None:
      decode hit.payload/hit.buffers as the
      worker's result; complete the future;      results.finish(pending, error=decoded or None)
    else: send the call as usual  ------------>  results.finish_later(pending, payload=...,
                                                           buffers=..., error=exc or None)
                                                   queued; the writer thread then runs
                                                   finish(): miss and (no error or
                                                   cache_errors): put; records on: one row

``finish_later`` keeps disk writes off the thread that completes the call (the caller's on the
direct path, the broker's otherwise); :meth:`CallResults.close` (at the runner's shutdown)
writes what is still queued.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._cache import CachedResult, ResultCache
from ._callkey import CallInputs, CallKey, EnvFacts, call_inputs, env_facts, key_for
from ._callrecords import (
    RecordStore,
    call_record,
    caller_project_dir,
    new_call_id,
    project_state,
)
from ._digest import UnhashableValueError

__all__ = ["CallResults", "PendingCall"]

log = logging.getLogger("envrunner.cache")

#: A call queued for the writer: its pending call, payload, buffers and error.
_Work = tuple[
    "PendingCall",
    "bytes | None",
    "Sequence[bytes | bytearray | memoryview]",
    "BaseException | str | None",
]


@dataclass
class PendingCall:
    """One call between :meth:`CallResults.begin` and :meth:`CallResults.finish`.

    Attributes:
        call_id: The call's id (32 hex digits), for records and logs.
        task: The function's qualified name.
        key: The call's key (None when neither the cache nor records are on, or, for records
            only, when an argument has no digest).
        env: The environment's facts.
        started: ``time.time()`` at :meth:`~CallResults.begin`.
        cache: ``"hit"``, ``"miss"`` or ``"off"``.
        hit: The stored result on a hit (decode ``payload`` and ``buffers`` as the worker's).
        reason: On a miss of a call stored before, why ("recomputing f(): ...").
        cache_errors: Whether an exception is stored too.
    """

    call_id: str
    task: str
    key: CallKey | None
    env: EnvFacts
    started: float
    cache: str
    hit: CachedResult | None = None
    reason: str | None = None
    cache_errors: bool = False


class CallResults:
    """The result cache and the call records of one runner.

    Args:
        records: False (no records), True (``$ENVRUNNER_RECORDS`` or ``<home>/runs.sqlite``),
            or a database path.
        cache_dir: The cache folder (default ``$ENVRUNNER_CACHE`` or ``<home>/results``).
        cache_size: Its size limit in bytes (default ``$ENVRUNNER_CACHE_SIZE`` or 10 GB).

    Raises:
        ValueError: ``$ENVRUNNER_CACHE_SIZE`` is not a size.
    """

    def __init__(
        self,
        *,
        records: bool | str | os.PathLike[str] = False,
        cache_dir: str | Path | None = None,
        cache_size: int | None = None,
    ) -> None:
        self.cache = ResultCache(cache_dir, cache_size)
        self.records: RecordStore | None = None
        if records:
            self.records = RecordStore(None if records is True else Path(records))
        self._facts: dict[str, EnvFacts] = {}
        self._project: tuple[Path, str | None, bool | None] | None = None
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Work | threading.Event | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        records = self.records.path if self.records is not None else None
        return f"<CallResults cache='{self.cache.root}' records={str(records)!r}>"

    def close(self, wait: bool = True) -> None:
        """Write what is queued (``wait``: before returning, then close the records).

        A call that ends after this is written by the thread that ends it.
        """
        with self._lock:
            self._closed = True
            writer = self._writer
        if writer is not None:
            self._queue.put(None)
            if not wait:
                return  # the writer finishes the queue; the records stay open for it
            writer.join()
        if self.records is not None:
            self.records.close()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what is queued now is written; False if ``timeout`` passed first."""
        done = threading.Event()
        with self._lock:
            if self._writer is None or self._closed:
                return True
            self._queue.put(done)
        return done.wait(timeout)

    def known(self, name: str) -> EnvFacts | None:
        """The facts of environment ``name`` if :meth:`environment` read them already."""
        return self._facts.get(name)

    def environment(self, resolved: Any) -> EnvFacts:
        """The facts of a built environment (read once per runner; ``resolved`` is its
        ``_environments.Resolved``)."""
        name = resolved.spec.name
        with self._lock:
            facts = self._facts.get(name)
        if facts is None:
            facts = env_facts(resolved)
            with self._lock:
                self._facts[name] = facts
        return facts

    def inputs(
        self, fn: Any, args: Sequence[Any], kwargs: Mapping[str, Any], *, cache: bool
    ) -> CallInputs | None:
        """At submission, in the caller's thread: the function's identity and the arguments'
        digests, taken before the caller can change the arguments. None when neither the
        cache (``cache``) nor records need them, or, for records alone, when an argument has
        no digest.

        Raises:
            envrunner._digest.UnhashableValueError: ``cache`` is on and an argument has no
                digest (its message names the argument and says ``.options(cache=False)``).
        """
        if cache:
            return call_inputs(fn, args, kwargs)
        if self.records is None:
            return None
        try:
            return call_inputs(fn, args, kwargs)
        except (UnhashableValueError, TypeError):
            return None

    def begin(
        self,
        fn: Any,
        inputs: CallInputs | None,
        env: EnvFacts,
        *,
        cache: bool,
        cache_errors: bool = False,
        started: float | None = None,
    ) -> PendingCall:
        """Once the environment is known (built): look the call up and start its record.

        Args:
            fn: The task's function (for its name when ``inputs`` is None).
            inputs: From :meth:`inputs` (required when ``cache``).
            env: :meth:`environment` of the call's environment.
            cache: Whether the call uses the cache.
            cache_errors: Whether an exception is stored too.
            started: When the call was submitted (default: now).
        """
        started = time.time() if started is None else started
        key = key_for(inputs, env) if inputs is not None else None
        if not cache or key is None:
            task = key.task if key is not None else _qualified(fn)
            return PendingCall(new_call_id(), task, key, env, started, "off")
        hit = self.cache.get(key)
        reason = None
        if hit is None:
            reason = self.cache.miss_reason(key)
            if reason is not None:
                log.info(reason)
        state = "hit" if hit is not None else "miss"
        return PendingCall(
            new_call_id(), key.task, key, env, started, state, hit, reason, cache_errors
        )

    def begin_call(
        self,
        fn: Any,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        env: EnvFacts,
        *,
        cache: bool,
        cache_errors: bool = False,
    ) -> PendingCall:
        """:meth:`inputs` and :meth:`begin` at once, for an environment known at submission."""
        inputs = self.inputs(fn, args, kwargs, cache=cache)
        return self.begin(fn, inputs, env, cache=cache, cache_errors=cache_errors)

    def finish(
        self,
        pending: PendingCall,
        *,
        payload: bytes | None = None,
        buffers: Sequence[bytes | bytearray | memoryview] = (),
        error: BaseException | str | None = None,
    ) -> None:
        """Store the result of a miss (``payload``/``buffers`` as the worker sent them; with
        ``error``, only when the task caches errors) and write the call's record.

        Never raises for a failed store or record: they are logged, and the call's own result
        stands.
        """
        stores = pending.cache == "miss" and pending.key is not None and payload is not None
        if stores and (error is None or pending.cache_errors):
            assert pending.key is not None and payload is not None
            try:
                self.cache.put(pending.key, payload, buffers, error=error is not None)
            except OSError as exc:
                log.warning("could not store the result of %s: %s", pending.task, exc)
        if self.records is None:
            return
        try:
            self.records.add(
                call_record(
                    call_id=pending.call_id,
                    task=pending.task,
                    key=pending.key,
                    env=pending.env,
                    started=pending.started,
                    ended=time.time(),
                    error=error,
                    cache=pending.cache,
                    project=self._project_state(),
                )
            )
        except Exception as exc:  # sqlite3.Error, a full disk: the call's result still stands
            log.warning("could not record call %s of %s: %s", pending.call_id, pending.task, exc)

    def finish_later(
        self,
        pending: PendingCall,
        *,
        payload: bytes | None = None,
        buffers: Sequence[bytes | bytearray | memoryview] = (),
        error: BaseException | str | None = None,
    ) -> None:
        """:meth:`finish`, in the writer thread (started on first use); nothing to do when
        the call stores nothing and records are off. ``payload`` and ``buffers`` must not
        change after: pass what no one writes to (a worker's frames, copies)."""
        stores = pending.cache == "miss" and payload is not None
        if self.records is None and not (stores and (error is None or pending.cache_errors)):
            return
        with self._lock:
            now = self._closed
            if not now:
                self._queue.put((pending, payload, buffers, error))
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write, name="envrunner-results", daemon=True
                    )
                    self._writer.start()
        if now:
            self.finish(pending, payload=payload, buffers=buffers, error=error)

    def _write(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            if isinstance(item, threading.Event):
                item.set()
                continue
            pending, payload, buffers, error = item
            self.finish(pending, payload=payload, buffers=buffers, error=error)

    def _project_state(self) -> tuple[Path, str | None, bool | None]:
        if self._project is None:
            folder = caller_project_dir()
            self._project = (folder, *project_state(folder))
        return self._project


def _qualified(fn: Any) -> str:
    target = getattr(fn, "__wrapped__", fn)
    return f"{getattr(target, '__module__', None)}.{getattr(target, '__qualname__', target)}"
