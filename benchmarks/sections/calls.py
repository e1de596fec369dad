"""Call overhead: a sync call with a tiny argument on a warm worker, and pipelined throughput.

Every system echoes the integer 1 (raw pyzmq: a 1-byte frame) from a warm worker. Sync calls are
sampled one by one (``perf_counter_ns`` around each call), in rounds that give each system the
same time and visit the systems in a rotated order. Pipelined throughput submits ``n`` calls at
once and waits for all of them, with 1 and then 2 workers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from harness import Bench, Section, interleave
from systems import (
    Envrunner,
    Execnet,
    Executor,
    MpPool,
    NewInterpreter,
    RawZmq,
    RayActors,
    RayTasks,
    System,
    make,
)

import envrunner

NAME = "calls"
TITLE = "1. Call overhead: sync round trip and pipelined throughput"

SYNC = "sync call, tiny argument"


def pipelined_case(workers: int) -> str:
    return f"pipelined, {workers} worker" + ("s" if workers > 1 else "")


def run(bench: Bench, section: Section) -> None:
    manifest = bench.core_manifest()
    with envrunner.Runner(manifest, progress=False) as runner:
        bench.prepare(runner, section, "the raw pyzmq echo server runs the caller's Python")
        other = bench.other_minor
        envs = [("same", f"envrunner (Python {bench.caller_minor}, same)")]
        if other is not None:
            envs.append(("other", f"envrunner (Python {other}, other)"))
        else:
            section.note("no other Python found: the other-Python path is not measured")
        _sync(bench, section, runner, envs)
        for workers in (1, 2):
            _pipelined(bench, section, runner, workers, envs)


def _alternatives(bench: Bench, section: Section, workers: int, sync: bool) -> list[System | None]:
    python = sys.executable
    folder = bench.tmp
    factories: list[tuple[str, Callable[[], System]]] = [
        ("raw pyzmq", lambda: RawZmq(python, folder, workers)),
        ("multiprocessing.Pool", lambda: MpPool(workers)),
        ("ProcessPoolExecutor", lambda: Executor(workers)),
        ("execnet", lambda: Execnet(python, workers)),
        ("Ray actor", lambda: RayActors(bench.tmp / "ray", workers)),
    ]
    if sync or workers > 1:
        # Ray tasks run on every core: measured once pipelined, with the 2-worker systems.
        factories.append(("Ray tasks", lambda: RayTasks(bench.tmp / "ray")))
    if sync:
        factories.append(("subprocess + pickle", lambda: NewInterpreter(python)))
    return [make(factory, section.skip, name) for name, factory in factories]


def _sync(bench: Bench, section: Section, runner: Any, envs: list[tuple[str, str]]) -> None:
    systems: list[System] = [Envrunner(runner, env, name) for env, name in envs]
    systems += [s for s in _alternatives(bench, section, 1, sync=True) if s is not None]
    try:
        # Warm up, and learn each system's latency to give each the same time per round.
        latency: dict[str, float] = {}
        for system in systems:
            warmup = 3 if isinstance(system, NewInterpreter) else 200
            for _ in range(warmup):
                system.call(1)
            begin = time.perf_counter()
            for _ in range(warmup):
                system.call(1)
            latency[system.name] = (time.perf_counter() - begin) / warmup
        rounds = bench.count(20, 5)
        budget = bench.count(0.25, 0.05)
        samples: dict[str, list[float]] = {s.name: [] for s in systems}
        clock = time.perf_counter_ns
        for _, system in interleave(rounds, systems):
            calls = max(3, int(budget / latency[system.name]))
            out = samples[system.name]
            call = system.call
            for _ in range(calls):
                begin = clock()
                call(1)
                out.append((clock() - begin) / 1000)
        for system in systems:
            section.add(
                SYNC,
                system.name,
                "us",
                samples[system.name],
                baseline=system.name == "raw pyzmq",
            )
    finally:
        for system in systems:
            system.close()


def _pipelined(
    bench: Bench, section: Section, runner: Any, workers: int, envs: list[tuple[str, str]]
) -> None:
    if workers == 1:
        systems: list[System] = [Envrunner(runner, env, name) for env, name in envs]
    else:
        systems = [Envrunner(runner, "same-2w", f"envrunner (Python {bench.caller_minor}, same)")]
    systems += [s for s in _alternatives(bench, section, workers, sync=False) if s is not None]
    case = pipelined_case(workers)
    n = bench.count(4000, 500)
    try:
        for system in systems:
            system.run_many(min(n, 500), 1)  # warm up (and start the second worker)
        rounds = bench.count(5, 2)
        rates: dict[str, list[float]] = {s.name: [] for s in systems}
        for _, system in interleave(rounds, systems):
            begin = time.perf_counter()
            system.run_many(n, 1)
            rates[system.name].append(n / (time.perf_counter() - begin))
        for system in systems:
            section.add(
                case,
                system.name,
                "calls/s",
                rates[system.name],
                baseline=system.name.startswith("raw pyzmq"),
                note=f"{n} calls submitted, then waited for",
            )
    finally:
        for system in systems:
            if not isinstance(system, Envrunner):
                system.close()
