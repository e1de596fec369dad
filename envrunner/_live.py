"""The live view of a workflow: per environment, how many calls are queued, running, done and
failed; a table redrawn in place on a terminal, plain lines in logs (CI).

::

    Runner.submit ─► Tally.submitted(env, future) ─► the future's done callback: done | failed
    LiveView thread, every interval:
        Tally counts + the scheduler's running calls per environment (under the broker's lock)
        ─► a terminal: the table redrawn in place    ─► else: one line, when something changed
    leaving the block ─► the last table (or line), left in the output
    on a terminal, sys.stdout and sys.stderr write above the table while the block runs (the
    table is erased, the text written, the table drawn again): prints and workers' output are
    not overwritten

A call counts as failed when its future holds an exception (the task raised, its worker died,
it timed out, its build failed); cancelled calls have their own count. Done counts the calls that
ended well, results from the cache too.

Own code rather than ``rich``: a table of a few lines redrawn with two escape codes needs no new
dependency for every user, and the plain-line mode for logs is ours either way.

May import: the standard library.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["LiveView", "Row", "Tally", "running_calls"]

#: Seconds between redraws on a terminal, and between lines in a log.
TERMINAL_INTERVAL = 0.5
LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class Row:
    """One environment's calls at one moment."""

    env: str
    queued: int
    running: int
    done: int
    failed: int
    cancelled: int = 0
    state: str = ""  # its pool's state when not simply ready: "building", "failed"

    def text(self) -> str:
        extra = f", {self.cancelled} cancelled" if self.cancelled else ""
        state = f" ({self.state})" if self.state else ""
        return (
            f"{self.env}{state}: {self.queued} queued, {self.running} running, {self.done} done, "
            f"{self.failed} failed{extra}"
        )


class Tally:
    """Calls submitted per environment, and how those that ended ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # env -> [submitted, done, failed, cancelled]
        self._counts: dict[str, list[int]] = {}

    def submitted(self, env: str, future: Future[Any]) -> None:
        """Count a call; its end is counted when its future completes."""
        with self._lock:
            self._counts.setdefault(env, [0, 0, 0, 0])[0] += 1
        future.add_done_callback(lambda done: self._ended(env, done))

    def _ended(self, env: str, future: Future[Any]) -> None:
        # Future.exception: the stand-in, not the decoded error (decoding is for whoever asks)
        failed = not future.cancelled() and Future.exception(future, 0) is not None
        column = 3 if future.cancelled() else 2 if failed else 1
        with self._lock:
            self._counts[env][column] += 1

    def rows(self, running: dict[str, int], states: dict[str, str]) -> list[Row]:
        """The table: one row per environment that has had calls (or is building)."""
        with self._lock:
            counts = {env: list(c) for env, c in self._counts.items()}
        rows = []
        for env in sorted(set(counts) | {e for e, s in states.items() if s}):
            submitted, done, failed, cancelled = counts.get(env, [0, 0, 0, 0])
            now = min(running.get(env, 0), submitted - done - failed - cancelled)
            queued = submitted - done - failed - cancelled - now
            rows.append(Row(env, queued, now, done, failed, cancelled, states.get(env, "")))
        return rows


def running_calls(broker: Any) -> tuple[dict[str, int], dict[str, str]]:
    """Calls running in workers, per environment, and pools building or failed
    (``Broker.activity``; nothing before the first call)."""
    if broker is None:
        return {}, {}
    activity: tuple[dict[str, int], dict[str, str]] = broker.activity()
    return activity


class LiveView:
    """Shows a :class:`Tally` while a ``with`` block runs (``Runner.live``).

    Args:
        tally: The counts.
        source: Returns the running calls and pool states (:func:`running_calls`).
        stream: Where to write (default: stderr).
        interval: Seconds between updates (default: 0.5 on a terminal, 10 in a log).
        terminal: Redraw in place (default: whether ``stream`` is a terminal).
    """

    def __init__(
        self,
        tally: Tally,
        source: Callable[[], tuple[dict[str, int], dict[str, str]]],
        stream: TextIO | None = None,
        interval: float | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.tally = tally
        self._source = source
        self._stream = stream
        if terminal is None:
            out = stream or sys.stderr
            terminal = bool(out is not None and out.isatty())
        self.terminal = terminal
        self.interval = interval or (TERMINAL_INTERVAL if terminal else LOG_INTERVAL)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()  # one writer at a time: the table, or text above it
        self._out: TextIO | None = None  # where the table goes, fixed when the block starts
        self._drawn = 0  # lines of the table on screen (terminal)
        self._partial = False  # text above the table ends mid-line: no table until it ends
        self._saved: tuple[Any, Any] | None = None  # sys.stdout and sys.stderr, replaced
        self._last = ""  # the last line written (log)
        self._started = 0.0

    def rows(self) -> list[Row]:
        """The table now."""
        running, states = self._source()
        return self.tally.rows(running, states)

    def __enter__(self) -> LiveView:
        self._started = time.monotonic()
        self._out = self._stream or sys.stderr
        if self.terminal:
            self._saved = (sys.stdout, sys.stderr)
            sys.stdout, sys.stderr = _Above(self, sys.stdout), _Above(self, sys.stderr)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="envrunner-live", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._show(final=True)
        if self._saved is not None:
            if isinstance(sys.stdout, _Above) and sys.stdout._view is self:
                sys.stdout = self._saved[0]
            if isinstance(sys.stderr, _Above) and sys.stderr._view is self:
                sys.stderr = self._saved[1]
            self._saved = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._show()

    def _show(self, final: bool = False) -> None:
        try:
            rows = self.rows()
        except Exception:  # the runner is shutting down under us: show the counts alone
            rows = self.tally.rows({}, {})
        stream = self._out
        if stream is None:
            return
        elapsed = f"{time.monotonic() - self._started:.0f}s"
        with self._lock:
            if self.terminal:
                if self._partial and not final:
                    return
                lines = [f"envrunner calls ({elapsed})", *(f"  {row.text()}" for row in rows)]
                up = f"\x1b[{self._drawn}F" if self._drawn else ""
                stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
                self._drawn = len(lines)
            else:
                line = "; ".join(row.text() for row in rows) or "no calls yet"
                if line == self._last and not final:
                    return
                self._last = line
                stream.write(f"envrunner [{elapsed}] {line}\n")
            stream.flush()

    def _above(self, target: Any, text: str) -> None:
        """Write ``text`` to ``target`` where the table was (it is drawn below at the next tick)."""
        with self._lock:
            if self._drawn and self._out is not None:
                self._out.write(f"\x1b[{self._drawn}F\x1b[0J")  # up, and clear what follows
                self._out.flush()
                self._drawn = 0
            target.write(text)
            target.flush()
            self._partial = not text.endswith("\n")
        # the table comes back at the next tick: a burst of output is not slowed by redraws


class _Above:
    """sys.stdout or sys.stderr while a terminal shows the table: text goes above it."""

    def __init__(self, view: LiveView, target: Any) -> None:
        self._view = view
        self._target = target

    def write(self, text: str) -> int:
        if text:
            self._view._above(self._target, text)
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)
