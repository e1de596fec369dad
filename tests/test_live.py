"""The live view: per environment, calls queued, running, done and failed, from real workers."""

from __future__ import annotations

import io
import os
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


def test_a_terminal_gets_the_table_redrawn_in_place(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    controller, terminal = os.openpty()
    shown: list[bytes] = []

    def read() -> None:  # keep the pseudo-terminal drained, as a terminal would
        while True:
            try:
                chunk = os.read(controller, 1 << 16)
            except OSError:  # the terminal side closed
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with open(terminal, "w", closefd=True) as screen:
        with runner.live(stream=screen, interval=0.05) as view:
            assert view.terminal
            assert runner.call("new", tasks.square, 3) == 9
            wait_for(lambda: row(view) == Row("new", 0, 0, 1, 0), what="1 done")
            wait_for(lambda: view._drawn == 2, what="the table of one environment")
    reader.join(10)
    os.close(controller)
    text = b"".join(shown).decode()
    assert "\x1b[2Fenvrunner calls" in text.replace("\x1b[2K", "")  # up two lines, redrawn
    assert text.rstrip().endswith("new: 0 queued, 0 running, 1 done, 0 failed")
