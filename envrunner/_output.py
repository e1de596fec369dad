"""Worker output on its way to the caller's streams, written by a thread of its own.

::

    broker thread ── put(stream, lines) ──► queue (bounded) ──► writer thread ──► sys.stdout/err
    a caller asking for a result ── wait(fence) ──► returns once the output before it is written
                                                    (or after a few seconds: it never hangs)

A stream nobody reads (a pipe whose reader went away, a terminal paused with Ctrl-S) blocks only
the writer thread: the broker goes on supervising, and calls go on finishing. Past
``LIMIT`` bytes waiting, lines are dropped and counted; the writer says how many when it can
write again.

May import: the standard library.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

__all__ = ["LIMIT", "WRITER", "Writer"]

#: Bytes of output that may wait for a stream before lines are dropped.
LIMIT = 64 << 20


class Writer:
    """Writes queued output in order, on a daemon thread started on first use."""

    def __init__(self) -> None:
        self._queue: collections.deque[tuple[Any, str, int]] = collections.deque()
        self._cond = threading.Condition()
        self._queued = 0  # the number of the last text queued
        self.written = 0  # the number of the last text written (or given up on)
        self._waiting = 0  # bytes queued, not yet written
        self._dropped = 0  # lines dropped since the last write
        self._thread: threading.Thread | None = None

    def put(self, stream: Any, text: str) -> int:
        """Queue ``text`` for ``stream``; the number to wait for (see :meth:`wait`)."""
        with self._cond:
            if self._waiting + len(text) > LIMIT:
                self._dropped += text.count("\n")
                return self._queued
            self._queued += 1
            self._queue.append((stream, text, self._queued))
            self._waiting += len(text)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="envrunner-output", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
            return self._queued

    def wait(self, fence: int, timeout: float) -> None:
        """Wait until the text numbered ``fence`` and all before it are written (or timeout)."""
        if fence <= self.written:
            return
        with self._cond:
            self._cond.wait_for(lambda: self.written >= fence, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                stream, text, number = self._queue.popleft()
                dropped, self._dropped = self._dropped, 0
            if dropped:
                text = (
                    f"[envrunner] {dropped} lines of worker output were dropped: this process's "
                    "output was not being read\n" + text
                )
            try:
                stream.write(text)
                stream.flush()
            except (OSError, ValueError):
                pass  # the caller closed its stream: nothing to show the output on
            with self._cond:
                self._waiting -= len(text)
                self.written = number
                self._cond.notify_all()


WRITER = Writer()
