"""Tasks whose answers are hostile to the caller (tests/test_broker_survives.py); importable
in any test environment: the standard library, and numpy inside the tasks."""

from __future__ import annotations

from typing import Any


def array_whose_segment_vanishes(size: int) -> Any:
    """A large array (it goes through shared memory), then an object whose pickling deletes
    the worker's shared-memory files: the answer names a segment the caller cannot open."""
    import glob
    import os

    import numpy

    class Vanish:
        def __reduce__(self) -> Any:
            folder = os.environ.get("ENVRUNNER_SHM_DIR") or "/dev/shm"
            for path in glob.glob(os.path.join(folder, f"envrunner-*-{os.getpid()}*")):
                os.unlink(path)
            return (int, (0,))

    return [numpy.ones(size, dtype=numpy.uint8), Vanish()]


def echo(value: Any) -> Any:
    return value


def wait_for(path: str) -> str:
    """Hold a worker until ``path`` exists (the test makes it)."""
    import os
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "went on"
