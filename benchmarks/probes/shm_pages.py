"""What a 100 MB copy into shared memory costs, by the state of the pages it lands in.

    python benchmarks/probes/shm_pages.py [--rounds 3]

Each line is one round: a new file in /dev/shm (or $ENVRUNNER_SHM_DIR) per measurement.
"""

from __future__ import annotations

import argparse
import mmap
import os
import time
from collections.abc import Callable

import numpy as np

SIZE = 100_000_000
STEP = 4 * 1024 * 1024
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
ZEROS = bytes(1 << 20)


def _pwrite_all(fd: int, data: memoryview) -> None:
    written = 0
    while written < SIZE:
        written += os.pwrite(fd, data[written:], written)


def _zeros(fd: int) -> None:
    for offset in range(0, SIZE, len(ZEROS)):
        os.pwrite(fd, ZEROS[: min(len(ZEROS), SIZE - offset)], offset)


def _populate(mapping: mmap.mmap) -> None:
    for offset in range(0, SIZE, STEP):
        mapping.madvise(MADV_POPULATE_WRITE, offset, min(STEP, SIZE - offset))


def _copy(mapping: mmap.mmap, data: memoryview) -> None:
    mapping[0:SIZE] = data


def _timed(out: list[str], label: str, step: Callable[[], object]) -> None:
    begin = time.perf_counter()
    step()
    out.append(f"{label} {(time.perf_counter() - begin) * 1000:.0f}")


def _one(path: str, case: str, source: memoryview, out: list[str]) -> None:
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
    os.ftruncate(fd, SIZE)
    mapping = mmap.mmap(fd, SIZE)
    try:
        if case == "pwrite":
            _timed(out, "pwrite into new pages", lambda: _pwrite_all(fd, source))
            _timed(out, "pwrite again", lambda: _pwrite_all(fd, source))
            _timed(out, "copy via mapping, faults", lambda: _copy(mapping, source))
        elif case == "fallocate":
            _timed(out, "fallocate", lambda: os.posix_fallocate(fd, 0, SIZE))
            _timed(out, "populate", lambda: _populate(mapping))
        else:
            _timed(out, "pwrite zeros", lambda: _zeros(fd))
            _timed(out, "populate", lambda: _populate(mapping))
        _timed(out, "copy into mapped pages", lambda: _copy(mapping, source))
    finally:
        mapping.close()
        os.close(fd)
        os.unlink(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    source = memoryview(np.random.default_rng(1).random(SIZE // 8)).cast("B")
    folder = os.environ.get("ENVRUNNER_SHM_DIR") or "/dev/shm"
    path = os.path.join(folder, f"probe-{os.getpid()}")
    for _ in range(rounds):
        out: list[str] = []
        for case in ("pwrite", "fallocate", "zeros"):
            _one(path, case, source, out)
        print(" | ".join(out), "(ms)")


if __name__ == "__main__":
    main()
