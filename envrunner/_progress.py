"""Build progress: one updating status line on a terminal, plain log lines elsewhere.

May import: the standard library.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from typing import Protocol, TextIO

__all__ = ["LogProgress", "Progress", "QuietProgress", "TerminalProgress", "auto_progress"]

# Installer lines worth a log line: they name a package being fetched, built or installed.
_NOTEWORTHY = re.compile(
    r"^\s*(Collecting|Downloading|Building wheel|Installing collected|Successfully installed"
    r"|Resolved|Prepared|Installed|Uninstalled|Built|\+ |- )"
)
_PACKAGE = re.compile(r"(?:Collecting|Downloading|Building wheel for|\+)\s+([A-Za-z0-9_.\-]+)")


class Progress(Protocol):
    """Receives what a build is doing."""

    def step(self, env: str, text: str) -> None:
        """A build step starts (``creating the virtualenv``, ``installing 12 requirements``)."""

    def output(self, env: str, line: str) -> None:
        """A line of installer output."""

    def done(self, env: str, text: str) -> None:
        """The build of ``env`` ended; ``text`` says how."""


class QuietProgress:
    """Says nothing."""

    def step(self, env: str, text: str) -> None:
        pass

    def output(self, env: str, line: str) -> None:
        pass

    def done(self, env: str, text: str) -> None:
        pass


class LogProgress:
    """Plain lines, for logs and CI: every step, and installer lines that name a package."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        with self._lock:
            stream.write(text + "\n")
            stream.flush()

    def step(self, env: str, text: str) -> None:
        self._write(f"envrunner: {env}: {text}")

    def output(self, env: str, line: str) -> None:
        if _NOTEWORTHY.match(line):
            self._write(f"envrunner: {env}:   {line.strip()}")

    def done(self, env: str, text: str) -> None:
        self._write(f"envrunner: {env}: {text}")


class TerminalProgress:
    """A status line rewritten in place: step, elapsed seconds (ticking), current package."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._steps: dict[str, tuple[str, float, str]] = {}
        self._ticking = threading.Event()

    def _status(self, env: str) -> None:
        stream = self.stream or sys.stderr
        text, started, detail = self._steps.get(env, ("", time.monotonic(), ""))
        line = f"envrunner: {env}: {text} ({time.monotonic() - started:.0f}s) {detail}"
        with self._lock:
            stream.write("\r\x1b[2K" + line[:200])
            stream.flush()

    def _tick(self) -> None:
        while self._steps and not self._ticking.wait(1.0):
            for env in list(self._steps):
                self._status(env)

    def step(self, env: str, text: str) -> None:
        self._steps[env] = (text, time.monotonic(), "")
        self._status(env)
        if len(self._steps) == 1:
            self._ticking.clear()
            threading.Thread(target=self._tick, name="envrunner-progress", daemon=True).start()

    def output(self, env: str, line: str) -> None:
        match = _PACKAGE.search(line)
        if match and env in self._steps:
            text, started, _ = self._steps[env]
            self._steps[env] = (text, started, match.group(1))
            self._status(env)

    def done(self, env: str, text: str) -> None:
        stream = self.stream or sys.stderr
        self._steps.pop(env, None)
        if not self._steps:
            self._ticking.set()
        with self._lock:
            stream.write(f"\r\x1b[2Kenvrunner: {env}: {text}\n")
            stream.flush()


def auto_progress(enabled: bool | None = None) -> Progress:
    """A terminal status line when stderr is a terminal, log lines otherwise, or nothing."""
    if enabled is False:
        return QuietProgress()
    stream = sys.stderr
    if stream is not None and stream.isatty():
        return TerminalProgress()
    return LogProgress()
