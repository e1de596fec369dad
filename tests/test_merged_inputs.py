"""Merged calls given futures: two calls merge only when given the very same future, never a
new future that happens to sit where a freed one was (``id`` is reused in CPython)."""

from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path

from answers import echo, wait_for

import envrunner
from envrunner._actions import CallState
from envrunner._futures import CallFuture

ECHO = envrunner.task(env="modern", merge=True)(echo)
MAKE = envrunner.task(env="same")(echo)


def test_a_pending_merged_call_keeps_its_input_futures_alive(
    manifest_path: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    with envrunner.Runner(manifest_path, progress=False) as runner:
        held = runner.submit("modern", wait_for, str(go))  # echo's calls queue behind it
        made = MAKE.submit(1)
        queued = ECHO.submit(made)
        made.result()
        alive = weakref.ref(made)
        del made
        assert isinstance(queued, CallFuture)
        ticket = queued._ticket()  # (the scheduler's record of the call, while it holds it)
        deadline = time.monotonic() + 30
        resolving = (CallState.WAITING, CallState.RESOLVING)
        while ticket.state in resolving and time.monotonic() < deadline:
            time.sleep(0.01)  # its input is put in on the inputs thread
        assert ticket.state not in (*resolving, CallState.DONE)  # queued, or sent ahead
        del ticket
        gc.collect()
        assert alive() is not None, "a pending merged call let go of the future in its key"
        go.touch()
        assert held.result(timeout=60) == "went on"
        assert queued.result(timeout=60) == 1


def test_calls_given_new_futures_never_merge_into_older_calls(
    manifest_path: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    with envrunner.Runner(manifest_path, progress=False) as runner:
        held = runner.submit("modern", wait_for, str(go))
        made = [MAKE.submit(i) for i in range(200)]
        first = [ECHO.submit(m) for m in made]
        for future in made:
            future.result()
        del made, future
        gc.collect()  # (before the fix, ids of these freed futures came back below)
        made = [MAKE.submit(1000 + i) for i in range(200)]
        for future in made:
            future.result()
        second = [ECHO.submit(m) for m in made]
        go.touch()
        assert held.result(timeout=60) == "went on"
        assert [f.result(timeout=60) for f in first] == list(range(200))
        assert [f.result(timeout=60) for f in second] == [1000 + i for i in range(200)]
