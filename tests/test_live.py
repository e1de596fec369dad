"""The live view: per environment, calls queued, running, done and failed, from real workers."""

from __future__ import annotations

import io
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import tasks
from support import WriteManifest, wait_for

import envrunner
from envrunner._live import Row


@pytest.fixture
def runner(write_manifest: WriteManifest) -> Iterator[envrunner.Runner]:
    path = write_manifest(
        """\
        version: 1
        environments:
          new:
            python: "3.12"
            requirements: ["six==1.16.0"]
            workers: 2
        """
    )
    with envrunner.Runner(path, progress=False) as fresh:
        yield fresh


def row(view: envrunner._live.LiveView, env: str = "new") -> Row | None:
    return next((r for r in view.rows() if r.env == env), None)


def test_counts_follow_calls_from_queued_to_running_to_done_or_failed(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    log = io.StringIO()
    gate = tmp_path / "gate"
    with runner.live(stream=log, interval=0.05) as view:
        blocked = [runner.submit("new", tasks.gate, str(gate)) for _ in range(3)]
        # two workers: two calls run, the third waits for one of them
        wait_for(
            lambda: row(view) == Row("new", 1, 2, 0, 0), timeout=60, what="2 running, 1 queued"
        )
        shown = "new: 1 queued, 2 running, 0 done, 0 failed"
        wait_for(lambda: shown in log.getvalue(), what="that state in the log")
        gate.touch()
        for future in blocked:
            future.result(timeout=60)
        assert runner.call("new", tasks.square, 4) == 16  # a synchronous call counts too
        failing = runner.submit("new", tasks.fail_builtin, "nope")
        with pytest.raises(ValueError):
            failing.result(timeout=60)
        wait_for(lambda: row(view) == Row("new", 0, 0, 4, 1), what="4 done, 1 failed")
    lines = log.getvalue().splitlines()
    assert lines[-1].endswith("new: 0 queued, 0 running, 4 done, 1 failed")
    assert "\x1b[" not in log.getvalue()  # a log gets plain lines


class Screen:
    """A pseudo-terminal, drained by a thread as a terminal would: what was shown on it."""

    def __init__(self) -> None:
        self._controller, terminal = os.openpty()
        self.stream = open(terminal, "w", closefd=True)  # noqa: SIM115 - closed by close()
        self._shown: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._controller, 1 << 16)
            except OSError:  # the terminal side closed
                return
            if not chunk:
                return
            self._shown.append(chunk)

    def close(self) -> str:
        self.stream.close()
        self._reader.join(10)
        os.close(self._controller)
        return b"".join(self._shown).decode().replace("\r\n", "\n")


def test_a_terminal_gets_the_table_redrawn_in_place(runner: envrunner.Runner) -> None:
    screen = Screen()
    with runner.live(stream=screen.stream, interval=0.05) as view:
        assert view.terminal
        assert runner.call("new", tasks.square, 3) == 9
        wait_for(lambda: row(view) == Row("new", 0, 0, 1, 0), what="1 done")
        wait_for(lambda: view._drawn == 2, what="the table of one environment")
    text = screen.close()
    assert "\x1b[2Fenvrunner calls" in text.replace("\x1b[2K", "")  # up two lines, redrawn
    assert text.rstrip().endswith("new: 0 queued, 0 running, 1 done, 0 failed")


def test_output_on_the_terminal_goes_above_the_table_never_under_it(
    runner: envrunner.Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = Screen()
    monkeypatch.setattr(sys, "stderr", screen.stream)  # the table's terminal, and the workers'
    with runner.live(interval=0.05) as view:
        assert view.terminal
        wait_for(lambda: view._drawn == 1, what="the table's first line")
        assert runner.call("new", tasks.shout, ["from the worker"], "err") == 1
        wait_for(lambda: view._drawn == 2, what="the table drawn again, below the output")
    assert sys.stderr is screen.stream  # given back as it was
    text = screen.close()
    erased = re.search("\x1b\\[[12]F\x1b\\[0J", text)  # the table erased, then the output
    assert erased is not None, repr(text)
    output = text.index("[new] from the worker\n", erased.end())
    assert text.index("envrunner calls", output) > output  # and the table below it again
