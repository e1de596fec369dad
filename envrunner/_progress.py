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
    """One status line per build, rewritten in place: step, elapsed time, current package."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._steps: dict[str, tuple[str, float]] = {}

    def _status(self, env: str, detail: str) -> None:
        stream = self.stream or sys.stderr
        text, started = self._steps.get(env, ("", time.monotonic()))
        line = f"envrunner: {env}: {text} ({time.monotonic() - started:.0f}s) {detail}"
        with self._lock:
            stream.write("\r\x1b[2K" + line[:200])
            stream.flush()

    def step(self, env: str, text: str) -> None:
        self._steps[env] = (text, time.monotonic())
        self._status(env, "")

    def output(self, env: str, line: str) -> None:
        match = _PACKAGE.search(line)
        if match:
            self._status(env, match.group(1))

    def done(self, env: str, text: str) -> None:
        stream = self.stream or sys.stderr
        with self._lock:
            stream.write(f"\r\x1b[2Kenvrunner: {env}: {text}\n")
            stream.flush()
        self._steps.pop(env, None)


def auto_progress(enabled: bool | None = None) -> Progress:
    """A terminal status line when stderr is a terminal, log lines otherwise, or nothing."""
    if enabled is False:
        return QuietProgress()
    stream = sys.stderr
    if stream is not None and stream.isatty():
        return TerminalProgress()
    return LogProgress()
