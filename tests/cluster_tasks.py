"""Tasks for tests/test_cluster.py: where they ran, and a call that waits to be stopped."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def double(array: Any) -> Any:
    return array * 2


def where() -> tuple[str, int]:
    """The Slurm job that runs this worker ("" elsewhere) and the worker's pid."""
    return os.environ.get("SLURM_JOB_ID", ""), os.getpid()


def shout(text: str) -> None:
    print(text, flush=True)


def array_task(seconds: float) -> tuple[str, str]:
    """The job array this worker's job belongs to and its task in it, after ``seconds``."""
    time.sleep(seconds)
    return os.environ.get("SLURM_ARRAY_JOB_ID", ""), os.environ.get("SLURM_ARRAY_TASK_ID", "")


def wait_here(started: str, seconds: float) -> str:
    """Say it started (a file), then take ``seconds``: long enough to be stopped under."""
    Path(started).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "finished"


def wait_once(started: str, seconds: float) -> str:
    """The first time, like :func:`wait_here`; once ``started`` exists, answer at once."""
    if Path(started).exists():
        return "again"
    return wait_here(started, seconds)
