"""Shared memory when the receiver keeps what it gets: spares made ahead, and no block lent twice.

A put that finds no warm room asks the arena's thread for a spare segment, allocated and mapped
ahead of the next value (``envrunner/_runtime/shm.py``). These tests check what must hold
whatever the timing: a value's pages are never handed to another value while it is alive, a
dropped value's block is reused, and a closed arena leaves no file behind.
"""

from __future__ import annotations

import itertools
import os
import threading

import numpy
import tasks

import envrunner
from envrunner._runtime.shm import MIN_SEGMENT, SHM_DIR, SPARE_MIN, Arena, Mapper

MB = 1024 * 1024


def _values(count: int, size: int) -> list[numpy.ndarray]:
    rng = numpy.random.default_rng(14)
    return [rng.integers(0, 255, size, dtype=numpy.uint8) for _ in range(count)]


def test_kept_blocks_are_never_lent_again_while_spares_are_made() -> None:
    prefix = f"envrunner-{os.getpid()}-{os.getpid()}.spares"
    arena = Arena(prefix)
    released: list[tuple[str, int]] = []
    mapper = Mapper(lambda name, offset: released.append((name, offset)))
    values = _values(24, 5 * MB)
    kept: dict[int, tuple[str, int, int]] = {}
    try:
        for index, value in enumerate(values):
            kept[index] = arena.put(value)
            if index % 3 == 2:  # the receiver drops every third value: its block comes back
                name, offset, _ = kept.pop(index - 1)
                arena.free(name, offset)
        assert arena.spares_made >= 1  # the keep pattern asked for spares
        spans = sorted((name, offset, offset + size) for name, offset, size in kept.values())
        for (name, _, end), (other, start, _) in itertools.pairwise(spans):
            assert name != other or end <= start, "two live values share pages"
        for index, (name, offset, size) in kept.items():
            view = mapper.block(name, offset, size)
            assert numpy.array_equal(view, values[index]), f"value {index} was overwritten"
            del view
        assert arena.in_use() >= sum(size for _, _, size in kept.values())
    finally:
        arena.close()
        mapper.close()
    assert not [n for n in os.listdir(SHM_DIR) if n.startswith(prefix + "-")]


def test_a_dropped_value_is_reused_not_a_new_segment() -> None:
    prefix = f"envrunner-{os.getpid()}-{os.getpid()}.reuse"
    arena = Arena(prefix)
    value = _values(1, MIN_SEGMENT)[0]
    try:
        for _ in range(6):  # the drop pattern: each value freed before the next put
            name, offset, _ = arena.put(value)
            arena.free(name, offset)
        segments = [n for n in os.listdir(SHM_DIR) if n.startswith(prefix + "-")]
        assert len(segments) <= 2  # the first segment and at most one spare
        assert arena.in_use() == 0
    finally:
        arena.close()


def test_small_values_never_ask_for_a_spare() -> None:
    prefix = f"envrunner-{os.getpid()}-{os.getpid()}.small"
    arena = Arena(prefix)
    try:
        for value in _values(6, SPARE_MIN // 2):  # kept: no block comes back
            arena.put(value)
        assert arena.spares_made == 0
        assert len([n for n in os.listdir(SHM_DIR) if n.startswith(prefix + "-")]) == 1
    finally:
        arena.close()


def test_puts_from_threads_while_blocks_come_back_keep_every_value() -> None:
    prefix = f"envrunner-{os.getpid()}-{os.getpid()}.threads"
    arena = Arena(prefix)
    mapper = Mapper(arena.free)
    values = _values(8, 5 * MB)
    failures: list[str] = []

    def loop(offset: int) -> None:
        for step in range(12):
            index = (offset + step) % len(values)
            name, where, size = arena.put(values[index])
            view = mapper.block(name, where, size)
            if not numpy.array_equal(view, values[index]):
                failures.append(f"value {index} changed under its receiver")
            del view  # gives the block back through the mapper, as a receiver does

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == []
        assert arena.in_use() == 0
    finally:
        arena.close()
        mapper.close()


def test_kept_results_of_a_worker_keep_their_values(runner: envrunner.Runner, env: str) -> None:
    values = [numpy.full(600_000, float(n)) for n in range(10)]  # 4.8 MB each: shared memory
    results = []
    for number, value in enumerate(values):
        (back,), _ = runner.call(env, tasks.echo, value)
        if number % 4 != 3:  # most are kept, as a list of results; some dropped at once
            results.append((number, back))
        del back
    for number, back in results:
        assert float(back.min()) == float(back.max()) == float(number)
