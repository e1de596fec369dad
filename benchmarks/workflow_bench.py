"""Workflows: 100,000 tiny tasks in chains and fan-ins, envrunner against dask.delayed on dask's
processes scheduler, on the same graph.

    python benchmarks/workflow_bench.py                 # 100,000 tasks; a few minutes
    python benchmarks/workflow_bench.py --tasks 10000   # a quick look

The graph: ``tasks / length`` chains of ``length`` calls ``inc(x)`` (each takes the previous
call's value), their ends summed by fan-ins of ``width`` (``total(*xs)``), and those sums by one
last fan-in. The tasks do next to nothing, so the time is the scheduling overhead.

Measured, per system:

- **per task**: the wall time from the first submit to the final value, divided by the tasks
  (building the graph included: envrunner's submits are its graph building);
- **compute**: for dask, ``dask.compute`` alone (the graph already built), with and without its
  graph optimisation (which may fuse chains: the note says how many tasks it scheduled);
- **memory per pending task**: what the caller allocates (``tracemalloc``) to hold the whole
  graph before any of it has run: dask's delayed objects, envrunner's pending futures (both
  workers held busy meanwhile, so nothing completes).

envrunner's side submits futures as arguments (``inc.submit(previous_future)``): a dependency
the scheduler resolves without the caller waiting. Waiting on each ``.result()`` in the caller
and passing the value on is not the same thing and is not measured. A runner that refuses
futures as arguments (the scheduler's dependency graph of issue 17 not in yet) is reported as
skipped, with the reason. For scale, the same number of *independent* calls (no graph) is
measured too, labelled as such.

Both systems get two worker processes on the caller's Python. Needs dask
(``pip install -e '.[bench]'``); one run prints one table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKERS = 2


def inc(x: int) -> int:
    return x + 1


def total(*xs: int) -> int:
    return sum(xs)


def hold(path: str, mark: str, timeout: float = 300.0) -> int:
    """Keep a worker busy until ``path`` exists (the memory pass: nothing completes); ``mark``
    says it has started."""
    open(mark, "w").close()
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.getpid()


@dataclass(frozen=True)
class Shape:
    tasks: int
    length: int
    width: int

    @property
    def chains(self) -> int:
        return max(1, self.tasks // self.length)

    @property
    def count(self) -> int:
        """Tasks in the graph: the chains' calls and the fan-ins."""
        groups = -(-self.chains // self.width)
        return self.chains * self.length + groups + 1

    @property
    def expected(self) -> int:
        return sum(i + self.length for i in range(self.chains))


def build(shape: Shape, step: Callable[[Any], Any], gather: Callable[..., Any]) -> Any:
    """The graph, through ``step`` (one chain link) and ``gather`` (one fan-in)."""
    ends = []
    for i in range(shape.chains):
        x: Any = i
        for _ in range(shape.length):
            x = step(x)
        ends.append(x)
    groups = [gather(*ends[j : j + shape.width]) for j in range(0, len(ends), shape.width)]
    return gather(*groups)


@contextmanager
def allocated(out: list[float]) -> Iterator[None]:
    """Bytes the block allocated and kept (every thread), appended to ``out``."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    try:
        yield
    finally:
        out.append(tracemalloc.get_traced_memory()[0] - before)
        tracemalloc.stop()


def dask_rows(shape: Shape) -> list[tuple[str, str, str]]:
    import concurrent.futures
    import multiprocessing

    import dask
    from dask import delayed

    d_inc, d_total = delayed(inc), delayed(total)
    rows = []
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as envrunner's workers
    pool = concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=context)
    with pool, dask.config.set(pool=pool, scheduler="processes"):
        dask.compute(d_total(*[d_inc(i) for i in range(WORKERS * 4)]))  # the pool started
        for optimize in (True, False):
            began = time.perf_counter()
            graph = build(shape, d_inc, d_total)
            built = time.perf_counter()
            (value,) = dask.compute(graph, optimize_graph=optimize)
            ended = time.perf_counter()
            assert value == shape.expected, (value, shape.expected)
            label = "dask.delayed, processes" + ("" if optimize else ", optimize_graph=False")
            per = (ended - began) / shape.count * 1e6
            compute = (ended - built) / shape.count * 1e6
            scheduled = shape.count
            if optimize:
                (fused,) = dask.optimize(build(shape, d_inc, d_total))
                scheduled = len(fused.__dask_graph__())
            note = f"{scheduled:,} tasks scheduled"
            rows.append((label, f"{per:.1f} µs/task", f"compute {compute:.1f} µs/task; {note}"))
            del graph
    kept: list[float] = []
    with allocated(kept):
        graph = build(shape, d_inc, d_total)
    del graph
    rows.append(("dask.delayed", f"{kept[0] / shape.count:.0f} B/pending task", "the graph held"))
    rows.insert(0, (f"(dask {dask.__version__})", "", ""))
    return rows


def envrunner_rows(shape: Shape, folder: Path) -> list[tuple[str, str, str]]:
    import envrunner

    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    manifest = folder / "environments.yaml"
    manifest.write_text(
        f'version: 1\nenvironments:\n  bench:\n    python: "{minor}"\n    workers: {WORKERS}\n'
    )
    rows = []
    with envrunner.Runner(manifest, progress=False) as runner:
        t_inc = envrunner.task(env="bench")(inc)
        t_total = envrunner.task(env="bench")(total)
        for future in [t_inc.submit(i) for i in range(WORKERS * 4)]:  # both workers started
            future.result(120)

        began = time.perf_counter()
        futures = [t_inc.submit(i) for i in range(shape.count)]
        for future in futures:
            future.result()
        per = (time.perf_counter() - began) / shape.count * 1e6
        rows.append(("(reference) envrunner, independent calls", f"{per:.1f} µs/call", "no graph"))
        del futures
        held = pending_bytes(
            runner, folder / "gate-1", lambda: [t_inc.submit(i) for i in range(shape.count)]
        )
        rows.append(
            (
                "(reference) envrunner, independent calls",
                f"{held / shape.count:.0f} B/pending call",
                "no graph",
            )
        )

        try:
            probe = t_inc.submit(t_inc.submit(0)).result(120)
            if probe != 2:
                raise AssertionError(f"inc(inc(0)) gave {probe!r}, not 2")
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
            rows.append(
                (
                    "envrunner, futures as arguments",
                    "skipped",
                    "this runner refuses a future as an argument (the scheduler's dependency "
                    f"graph, issue 17, is not in yet): {reason}",
                )
            )
            return rows

        began = time.perf_counter()
        final = build(shape, t_inc.submit, t_total.submit)
        built = time.perf_counter()
        value = final.result()
        ended = time.perf_counter()
        assert value == shape.expected, (value, shape.expected)
        per, submit = (ended - began) / shape.count * 1e6, (built - began) / shape.count * 1e6
        rows.append(
            ("envrunner, futures as arguments", f"{per:.1f} µs/task", f"submit {submit:.1f} µs")
        )
        del final

        held = pending_bytes(
            runner, folder / "gate-2", lambda: [build(shape, t_inc.submit, t_total.submit)]
        )
        rows.append(("envrunner", f"{held / shape.count:.0f} B/pending task", "futures held"))
    return rows


def pending_bytes(runner: Any, gate: Path, submit: Callable[[], list[Any]]) -> float:
    """What ``submit()``'s calls keep allocated in the caller while none of them can run (every
    worker held busy); then they are let run and waited for."""
    marks = [gate.with_name(f"{gate.name}.{n}") for n in range(WORKERS)]
    holders = [runner.submit("bench", hold, str(gate), str(mark)) for mark in marks]
    deadline = time.monotonic() + 120
    while not all(mark.exists() for mark in marks):  # every worker holds one: nothing runs
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not all start holding")
        time.sleep(0.01)
    kept: list[float] = []
    with allocated(kept):
        futures = submit()
    gate.touch()
    for future in [*holders, *futures]:
        future.result(600)
    return kept[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks in chains (100000)")
    parser.add_argument("--length", type=int, default=100, help="calls per chain (100)")
    parser.add_argument("--width", type=int, default=100, help="chain ends per fan-in (100)")
    parser.add_argument("--only", choices=["dask", "envrunner"], help="measure one system")
    args = parser.parse_args()
    shape = Shape(args.tasks, args.length, args.width)

    folder = Path(tempfile.mkdtemp(prefix="workflow-bench-"))
    os.environ.setdefault("ENVRUNNER_HOME", str(folder / "home"))
    rows: list[tuple[str, str, str]] = []
    if args.only != "envrunner":
        try:
            rows += dask_rows(shape)
        except ImportError:
            rows.append(("dask.delayed", "skipped", "dask is not installed: pip install dask"))
    if args.only != "dask":
        rows += envrunner_rows(shape, folder)

    print(
        f"{shape.count:,} tasks: {shape.chains:,} chains of {shape.length}, fan-ins of "
        f"{shape.width}; {WORKERS} workers; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print(f"{'SYSTEM':<44} {'VALUE':>22}  NOTE")
    for system, value, note in rows:
        print(f"{system:<44} {value:>22}  {note}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import workflow_bench  # the tasks by reference: workers and dask's processes import them

    sys.exit(workflow_bench.main())
