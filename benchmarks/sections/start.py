"""Worker start: the first call on a built environment, against starting a bare interpreter.

For each Python, in an environment holding only the worker runtime (built beforehand, not
measured), in rounds of:

- ``python -c pass`` with the environment's interpreter: the bare start;
- ``python -c "import zmq, msgpack, cloudpickle"``: the runtime's imports (the baseline);
- a new ``Runner``, then the first call of ``bench_tasks.noop``, timed from the call to its
  result: environment lookup (a cache hit), worker spawn, handshake and the call;

and for the caller's Python, the same first call in a new script (``import envrunner`` included).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import bench_tasks
from harness import HERE, Bench, Section, env_python, timed_run

import envrunner

NAME = "start"
TITLE = "3. Worker start: first call on a built environment"

IMPORTS = "import zmq, msgpack, cloudpickle"
NEW_SCRIPT = """\
import time
begin = time.perf_counter()
import envrunner, bench_tasks
runner = envrunner.Runner({manifest!r}, progress=False)
runner.call({env!r}, bench_tasks.noop)
print(time.perf_counter() - begin)
runner.shutdown()
"""


def run(bench: Bench, section: Section) -> None:
    minors = sorted(bench.pythons, key=lambda m: tuple(map(int, m.split("."))))
    if bench.quick:
        minors = [m for m in minors if m in (bench.caller_minor, bench.other_minor)]
    manifest = bench.bare_manifest(minors)
    started = time.perf_counter()
    with envrunner.Runner(manifest, progress=False) as runner:
        runner.prepare()
    section.note(
        f"setup: {len(minors)} environments (worker runtime only) built or found in "
        f"{time.perf_counter() - started:.1f} s (not measured)"
    )
    pythons = {minor: str(env_python(manifest, _env(minor))) for minor in minors}
    rounds = bench.count(10, 3)
    samples: dict[tuple[str, str], list[float]] = {}

    def add(minor: str, what: str, seconds: float) -> None:
        samples.setdefault((minor, what), []).append(seconds * 1000)

    # Warm the page cache and the runtime's bytecode once per Python (not measured).
    for minor in minors:
        timed_run([pythons[minor], "-c", IMPORTS])
        _first_call(manifest, _env(minor))
    for index in range(rounds):
        for minor in minors[index % len(minors) :] + minors[: index % len(minors)]:
            python = pythons[minor]
            add(minor, "bare", timed_run([python, "-c", "pass"]))
            add(minor, "imports", timed_run([python, "-c", IMPORTS]))
            add(minor, "envrunner", _first_call(manifest, _env(minor)))
            if minor == bench.caller_minor:
                add(minor, "script", _new_script(manifest, _env(minor)))
    for minor in minors:
        case = f"Python {minor}"
        section.add(case, "python -c pass", "ms", samples[minor, "bare"])
        section.add(case, f"python -c '{IMPORTS}'", "ms", samples[minor, "imports"], baseline=True)
        section.add(
            case,
            "envrunner: first call, new Runner",
            "ms",
            samples[minor, "envrunner"],
            note="Runner made before the clock starts",
        )
        if (minor, "script") in samples:
            section.add(
                case,
                "envrunner: first call in a new script",
                "ms",
                samples[minor, "script"],
                note="from the script's first line: import envrunner, Runner, call",
            )


def _env(minor: str) -> str:
    return "py" + minor.replace(".", "_")


def _first_call(manifest: Path, env: str) -> float:
    runner = envrunner.Runner(manifest, progress=False)
    try:
        begin = time.perf_counter()
        runner.call(env, bench_tasks.noop)
        return time.perf_counter() - begin
    finally:
        runner.shutdown()


def _new_script(manifest: Path, env: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", NEW_SCRIPT.format(manifest=str(manifest), env=env)],
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE,
    )
    return float(out.stdout.strip().splitlines()[-1])
