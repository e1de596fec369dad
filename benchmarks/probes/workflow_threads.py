"""Where a workflow's time goes: workflow_bench.py's graph, and the CPU each thread spent on it.

    python benchmarks/probes/workflow_threads.py [--tasks 20000] [--repeat 2] [--no-gc]

Runs the chains and fan-ins of ``workflow_bench.py`` (futures as arguments, two workers) and
prints, per run, the wall time per task, the submit time per task, and the CPU time per task of
each of the caller's threads (its calling thread, the broker's, the inputs thread when it ran,
zmq's I/O thread), and of the workers together, from ``/proc``. The calling thread and the
broker's share one GIL: their sum is about the wall time. ``--no-gc`` turns the garbage
collector off in the caller, to show its share (a pending graph is walked by every full
collection).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from pathlib import Path

from _env import manifest

TICK = os.sysconf("SC_CLK_TCK")


def cpu(stat: Path) -> float:
    """User + system seconds of a process or thread, from its ``stat``."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def threads() -> dict[str, float]:
    """CPU seconds of each of this process's threads, by name (Python's, else the kernel's)."""
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = names.get(task.name) or (task / "comm").read_text().strip()
            out[name] = out.get(name, 0.0) + cpu(task / "stat")
        except OSError:  # (gone meanwhile)
            pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-gc", action="store_true")
    args = parser.parse_args()
    path = manifest()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import workflow_bench as wb  # (the tasks by reference: the workers import them too)

    import envrunner

    shape = wb.Shape(args.tasks, 100, 100)
    text = path.read_text().replace("requirements: [numpy]", "workers: 2")
    path.write_text(text)
    if args.no_gc:
        gc.disable()
    with envrunner.Runner(path, progress=False) as runner:
        inc = envrunner.task(env="same")(wb.inc)
        total = envrunner.task(env="same")(wb.total)
        for future in [inc.submit(i) for i in range(8)]:  # both workers started
            future.result(300)
        pids = runner.worker_pids("same")
        for _ in range(args.repeat):
            before, workers = threads(), sum(cpu(Path(f"/proc/{p}/stat")) for p in pids)
            began = time.perf_counter()
            final = wb.build(shape, inc.submit, total.submit)
            built = time.perf_counter()
            assert final.result() == shape.expected
            ended = time.perf_counter()
            after = threads()
            workers = sum(cpu(Path(f"/proc/{p}/stat")) for p in pids) - workers
            per = 1e6 / shape.count
            spent = {n: (after[n] - before.get(n, 0.0)) * per for n in after}
            shown = ", ".join(f"{n} {t:.1f}" for n, t in sorted(spent.items()) if t >= 0.5)
            print(
                f"{shape.count:,} tasks: {(ended - began) * per:.1f} µs/task wall, submit "
                f"{(built - began) * per:.1f}; CPU µs/task: {shown}; workers {workers * per:.1f}"
            )


if __name__ == "__main__":
    main()
