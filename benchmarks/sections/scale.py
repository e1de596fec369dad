"""Scale: 8 environments in one script, 10,000 queued calls, and memory.

- 8 environments (worker runtime only, spread over the Pythons found): the first call in one,
  then one call submitted to each of the 8 at once; sync calls visiting them in turn. This part
  runs in a fresh interpreter (``scale_probe.py``) so that the caller's memory is its own.
- 10,000 calls submitted at once to 2 workers, then waited for, against the same with the
  alternatives (2 workers each).
- Memory: a worker's resident set once idle, against a bare interpreter and one that imported
  the worker runtime's packages, and a multiprocessing worker; the caller's growth for the
  broker (8 workers up, then 10,000 calls queued).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from harness import HERE, Bench, Section, env_python, interleave, rss_kib
from systems import Envrunner, Executor, MpPool, RawZmq, RayTasks, System, make

import envrunner

NAME = "scale"
TITLE = "5. Scale: 8 environments, 10,000 queued calls, memory"

IDLE = "import time, sys{imports}; print('ready', flush=True); sys.stdin.read()"


def run(bench: Bench, section: Section) -> None:
    minors = sorted(bench.pythons, key=lambda m: tuple(map(int, m.split("."))))
    if bench.quick:
        minors = [m for m in minors if m in (bench.caller_minor, bench.other_minor)]
    manifest = bench.bare_manifest(minors)
    envs = {f"e{i}": minors[i % len(minors)] for i in range(8)}
    eight = bench.manifest(
        "eight", {name: {"python": minor, "requirements": []} for name, minor in envs.items()}
    )
    started = time.perf_counter()
    with envrunner.Runner(eight, progress=False) as runner:
        runner.prepare()
    section.note(
        f"setup: 8 environments over Pythons {', '.join(minors)} built or found in "
        f"{time.perf_counter() - started:.1f} s (not measured)"
    )
    calls = bench.count(10_000, 2_000)
    if bench.quick:
        section.note("--quick: 2,000 queued calls instead of 10,000")
    probes = [_probe(bench, eight, calls, list(envs)) for _ in range(bench.count(3, 1))]
    section.add(
        "first call",
        "envrunner: 1 environment",
        "ms",
        [p["one_env_s"] * 1000 for p in probes],
        baseline=True,
    )
    section.add(
        "first call",
        "envrunner: 8 environments at once",
        "ms",
        [p["all_envs_s"] * 1000 for p in probes],
        note=f"over Pythons {', '.join(minors)}",
    )
    section.add(
        "sync call, round robin over 8 environments",
        "envrunner",
        "us",
        [s for p in probes for s in p["round_robin_us"]],
    )
    _queue(bench, section, calls, probes)
    _memory(bench, section, manifest, minors, envs, probes)


def _probe(bench: Bench, manifest: object, calls: int, envs: list[str]) -> dict[str, object]:
    # The probe queues its calls in e0: one worker of the oldest Python found.
    out = subprocess.run(
        [sys.executable, str(HERE / "scale_probe.py"), str(manifest), "e0", str(calls), *envs],
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _queue(bench: Bench, section: Section, calls: int, probes: list[dict[str, object]]) -> None:
    case = f"{calls:,} calls queued at once, 2 workers"
    manifest = bench.core_manifest()
    with envrunner.Runner(manifest, progress=False) as runner:
        runner.prepare("same-2w")
        systems: list[System] = [
            Envrunner(runner, "same-2w", f"envrunner (Python {bench.caller_minor})"),
            RawZmq(sys.executable, bench.tmp, 2, name="raw pyzmq (2 servers)"),
            MpPool(2),
            Executor(2),
        ]
        ray = make(lambda: RayTasks(bench.tmp / "ray"), section.skip, "Ray tasks")
        if ray is not None:
            systems.append(ray)
        try:
            for system in systems:
                system.run_many(500, 1)
            rates: dict[str, list[float]] = {s.name: [] for s in systems}
            for _, system in interleave(bench.count(3, 1), systems):
                begin = time.perf_counter()
                system.run_many(calls, 1)
                rates[system.name].append(calls / (time.perf_counter() - begin))
        finally:
            for system in systems:
                system.close()
    for system in systems:
        section.add(
            case, system.name, "calls/s", rates[system.name], baseline=system.name.startswith("raw")
        )
    growth = [
        (int(p["rss_queued_kib"]) - int(p["rss_workers_kib"])) / 1024  # type: ignore[call-overload]
        for p in probes
    ]
    section.add(
        "caller memory",
        f"envrunner: growth with {calls:,} calls queued",
        "MB",
        growth,
        note="fresh process (scale_probe.py); 1 worker, the queue in the broker",
    )


def _memory(
    bench: Bench,
    section: Section,
    manifest: object,
    minors: list[str],
    envs: dict[str, str],
    probes: list[dict[str, object]],
) -> None:
    growth = [
        (int(p["rss_workers_kib"]) - int(p["rss_start_kib"])) / 1024  # type: ignore[call-overload]
        for p in probes
    ]
    section.add(
        "caller memory",
        "envrunner: growth for the broker, 8 workers up",
        "MB",
        growth,
        note="after import envrunner, until 8 workers answered",
    )
    by_minor: dict[str, list[float]] = {}
    for probe in probes:
        for env, _pid, kib in probe["workers"]:  # type: ignore[attr-defined]
            by_minor.setdefault(envs[env], []).append(kib / 1024)
    for minor in minors:
        python = str(env_python(manifest, "py" + minor.replace(".", "_")))  # type: ignore[arg-type]
        case = f"idle worker RSS, Python {minor}"
        section.add(case, "python, idle", "MB", [_idle_rss(python, "")])
        section.add(
            case,
            "python + import zmq, msgpack, cloudpickle",
            "MB",
            [_idle_rss(python, "; import zmq, msgpack, cloudpickle")],
            baseline=True,
        )
        if minor in by_minor:
            section.add(case, "envrunner worker", "MB", by_minor[minor])
        if minor == bench.caller_minor:
            pool = MpPool(1)
            try:
                section.add(
                    case,
                    "multiprocessing.Pool worker",
                    "MB",
                    [rss_kib(pid) / 1024 for pid in pool.pids()],
                )
            finally:
                pool.close()


def _idle_rss(python: str, imports: str) -> float:
    process = subprocess.Popen(
        [python, "-c", IDLE.format(imports=imports)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        time.sleep(0.2)
        return rss_kib(process.pid) / 1024
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(10)
        process.stdout.close()  # type: ignore[union-attr]
