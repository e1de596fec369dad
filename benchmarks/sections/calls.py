"""Call overhead: a sync call with a tiny argument on a warm worker, and pipelined throughput.

Every system echoes the integer 1 (raw pyzmq: a 1-byte frame) from a warm worker. Sync calls are
sampled one by one (``perf_counter_ns`` around each call), in rounds that give each system the
same time and visit the systems in a rotated order. Pipelined throughput submits ``n`` calls at
once and waits for all of them, with 1 and then 2 workers.

Then: the same pipelined calls of a task that sleeps 1 ms, on 1 and on 2 workers (how calls
scale with workers, apart from the CPU limit of a 2-core machine); ``map`` over 100,000 items
with a chunksize, against ``multiprocessing.Pool.map`` with the same chunksize (1 worker each);
and sync and pipelined calls to a worker started with ``envrunner worker`` that joined over tcp
with CurveZMQ on 127.0.0.1, against raw pyzmq over tcp with Curve.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_tasks
from harness import Bench, Section, interleave
from systems import (
    Envrunner,
    EnvrunnerRemote,
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
SLEEPING = "pipelined, task sleeps 1 ms"
REMOTE_SYNC = "sync call over tcp + CurveZMQ"
REMOTE_PIPELINED = "pipelined over tcp + CurveZMQ, 1 worker"
MAP_ITEMS = 100_000
CHUNKSIZES = (100, 1000)


def pipelined_case(workers: int) -> str:
    return f"pipelined, {workers} worker" + ("s" if workers > 1 else "")


def map_case(chunksize: int) -> str:
    return f"map over {MAP_ITEMS:,} items, chunksize {chunksize}"


def sleeping_system(workers: int) -> str:
    return f"envrunner, {workers} worker" + ("s" if workers > 1 else "")


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
        _sleeping(bench, section, runner)
        _maps(bench, section, runner, envs)
    _remote(bench, section, manifest)


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


def _sleeping(bench: Bench, section: Section, runner: Any) -> None:
    """Calls of a task that sleeps 1 ms, all submitted at once, on 1 and on 2 workers."""
    import multiprocessing

    n = bench.count(1000, 300)
    envs = {sleeping_system(1): "same", sleeping_system(2): "same-2w"}
    pool = MpPool(2)
    pool.name = "multiprocessing.Pool (2 workers)"

    def run(name: str) -> None:
        if name == pool.name:
            results = [pool.pool.apply_async(bench_tasks.sleep_1ms, (1,)) for _ in range(n)]
            for result in results:
                result.get()
            return
        futures = [runner.submit(envs[name], bench_tasks.sleep_1ms, 1) for _ in range(n)]
        for future in futures:
            future.result()

    names = [*envs, pool.name]
    try:
        for name in names:
            run(name)  # warm up (and start the second worker)
        rates: dict[str, list[float]] = {name: [] for name in names}
        for _, name in interleave(bench.count(3, 2), names):
            begin = time.perf_counter()
            run(name)
            rates[name].append(n / (time.perf_counter() - begin))
        for name in names:
            section.add(
                SLEEPING,
                name,
                "calls/s",
                rates[name],
                baseline=name == sleeping_system(1),
                note=f"{n} calls submitted, then waited for; {multiprocessing.cpu_count()} cores",
            )
    finally:
        pool.close()


def _maps(bench: Bench, section: Section, runner: Any, envs: list[tuple[str, str]]) -> None:
    """``map`` over 100,000 items with a chunksize, against ``Pool.map``; 1 worker each."""
    pool = MpPool(1)
    items = range(MAP_ITEMS)
    expected = MAP_ITEMS  # the last item's result: inc(99,999)
    try:
        for chunksize in CHUNKSIZES:
            systems: dict[str, Callable[[], list[Any]]] = {}
            for env, name in envs:
                systems[name] = lambda env=env, c=chunksize: list(
                    runner.map(env, bench_tasks.inc, items, chunksize=c)
                )
            systems["multiprocessing.Pool.map"] = lambda c=chunksize: pool.pool.map(
                bench_tasks.inc, items, chunksize=c
            )
            for run in systems.values():
                if run()[-1] != expected:  # warm up, and check the results once
                    raise AssertionError("map returned other results")
            rates: dict[str, list[float]] = {name: [] for name in systems}
            for _, name in interleave(bench.count(5, 2), list(systems)):
                begin = time.perf_counter()
                systems[name]()
                rates[name].append(MAP_ITEMS / (time.perf_counter() - begin))
            for name in systems:
                section.add(
                    map_case(chunksize),
                    name,
                    "items/s",
                    rates[name],
                    baseline=name == "multiprocessing.Pool.map",
                    note="1 worker; results listed in order",
                )
    finally:
        pool.close()


def _remote(bench: Bench, section: Section, manifest: Path) -> None:
    """Calls to a worker that joined over tcp with CurveZMQ, against raw pyzmq with Curve."""
    name = f"envrunner (Python {bench.caller_minor}, `envrunner worker` over tcp)"
    systems: list[System] = []
    try:
        systems.append(EnvrunnerRemote(manifest, "remote", bench.tmp, name))
        systems.append(RawZmq(sys.executable, bench.tmp, 1, "raw pyzmq (tcp, Curve)", curve=True))
        latency: dict[str, float] = {}
        for system in systems:
            for _ in range(200):
                system.call(1)
            begin = time.perf_counter()
            for _ in range(200):
                system.call(1)
            latency[system.name] = (time.perf_counter() - begin) / 200
        samples: dict[str, list[float]] = {s.name: [] for s in systems}
        budget = bench.count(0.25, 0.05)
        clock = time.perf_counter_ns
        for _, system in interleave(bench.count(10, 4), systems):
            out, call = samples[system.name], system.call
            for _ in range(max(3, int(budget / latency[system.name]))):
                begin = clock()
                call(1)
                out.append((clock() - begin) / 1000)
        n = bench.count(4000, 500)
        rates: dict[str, list[float]] = {s.name: [] for s in systems}
        for _, system in interleave(bench.count(5, 2), systems):
            begin = time.perf_counter()
            system.run_many(n, 1)
            rates[system.name].append(n / (time.perf_counter() - begin))
        for system in systems:
            base = system.name.startswith("raw pyzmq")
            section.add(REMOTE_SYNC, system.name, "us", samples[system.name], baseline=base)
            section.add(
                REMOTE_PIPELINED,
                system.name,
                "calls/s",
                rates[system.name],
                baseline=base,
                note=f"{n} calls submitted, then waited for",
            )
    finally:
        for system in systems:
            system.close()
