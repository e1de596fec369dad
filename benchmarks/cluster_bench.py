"""Workers as Slurm jobs (``launcher: slurm``): what the first call and each later call cost.

    python benchmarks/cluster_bench.py [--repeat 5] [--calls 2000]

Needs a working Slurm (``sbatch``, ``scontrol``; ``.ci/services.sh`` starts a single-node one)
and submitit (``pip install -e '.[slurm]'``). Both environments are the caller's Python with
numpy, built once before anything is timed.

- **first call**: a new Runner, one call of a no-op to a ``launcher: slurm`` environment, until
  its result is back (submission, queue, job start, ``envrunner worker`` finding the build, the
  worker's start and hello, the call), against ``sbatch --wait --wrap 'python -c pass'`` and
  against ``sbatch`` of the same job then asking ``scontrol`` every 0.1 s until it completed
  (what ``--wait``'s own polling interval adds).
- **calls/s**: sequential round trips of a no-op, and 2000 calls submitted at once (pipelined),
  to a Slurm worker over tcp (CurveZMQ) against a local worker (ipc, the direct path for
  sequential calls).

Times are medians; one run prints one table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

MANIFEST = """\
version: 1
environments:
  here:
    python: "{minor}"
    requirements: ["numpy>=2"]
  far:
    python: "{minor}"
    requirements: ["numpy>=2"]
    launcher: slurm
    slurm: {{cpus_per_task: 1, time: "00:30:00"}}
"""


def noop() -> None:
    return None


def first_call(manifest: Path, task: Any) -> float:
    import envrunner

    begin = time.perf_counter()
    with envrunner.Runner(manifest, progress=False, start_timeout=300) as runner:
        runner.submit("far", task).result(timeout=600)
        elapsed = time.perf_counter() - begin
    return elapsed


def sbatch_wait(folder: Path) -> float:
    begin = time.perf_counter()
    subprocess.run(
        ["sbatch", "--wait", "-o", str(folder / "wait-%j.out"), "--wrap", "python3 -c pass"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - begin


def sbatch_polled(folder: Path) -> float:
    begin = time.perf_counter()
    out = subprocess.run(
        ["sbatch", "--parsable", "-o", str(folder / "poll-%j.out"), "--wrap", "python3 -c pass"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    job = out.strip().split(";")[0]
    while True:
        state = subprocess.run(
            ["scontrol", "-o", "show", "job", job], capture_output=True, text=True, check=False
        ).stdout
        if "JobState=COMPLETED" in state or "JobState=FAILED" in state:
            return time.perf_counter() - begin
        time.sleep(0.1)


def rates(manifest: Path, env: str, calls: int, task: Any) -> tuple[float, float]:
    """(sequential calls/s, pipelined calls/s) to one worker of ``env``."""
    import envrunner

    with envrunner.Runner(manifest, progress=False, start_timeout=300) as runner:
        runner.submit(env, task).result(timeout=600)  # started and warm
        begin = time.perf_counter()
        for _ in range(calls):
            runner.submit(env, task).result()
        sequential = calls / (time.perf_counter() - begin)
        begin = time.perf_counter()
        futures = [runner.submit(env, task) for _ in range(calls)]
        for future in futures:
            future.result()
        pipelined = calls / (time.perf_counter() - begin)
    return sequential, pipelined


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="envrunner-cluster-bench-"))
    os.chdir(folder)  # job output files of the baselines land here
    (folder / "cluster_bench.py").write_text(Path(__file__).read_text())
    sys.path.insert(0, str(folder))
    import cluster_bench  # type: ignore[import-not-found]

    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    manifest = folder / "environments.yaml"
    manifest.write_text(MANIFEST.format(minor=minor))
    import envrunner

    envrunner.Runner(manifest, progress=False).prepare()  # built once, not timed
    task = cluster_bench.noop  # by reference, from the folder the jobs import it from

    first = [first_call(manifest, task) for _ in range(args.repeat)]
    waited = [sbatch_wait(folder) for _ in range(args.repeat)]
    polled = [sbatch_polled(folder) for _ in range(args.repeat)]
    slurm_seq, slurm_pipe = rates(manifest, "far", args.calls, task)
    local_seq, local_pipe = rates(manifest, "here", args.calls, task)

    med = statistics.median
    rows = [
        ("measure", "envrunner, launcher: slurm", "baseline", "baseline's value"),
        ("---", "---", "---", "---"),
        (
            f"first call (s, median of {args.repeat})",
            f"{med(first):.2f}",
            "`sbatch --wait --wrap 'python3 -c pass'`",
            f"{med(waited):.2f}",
        ),
        (
            f"first call (s, median of {args.repeat})",
            f"{med(first):.2f}",
            "`sbatch` + `scontrol` every 0.1 s until COMPLETED",
            f"{med(polled):.2f}",
        ),
        (
            f"sequential calls/s ({args.calls} no-ops)",
            f"{slurm_seq:,.0f}",
            "a local worker",
            f"{local_seq:,.0f}",
        ),
        (
            f"pipelined calls/s ({args.calls} no-ops)",
            f"{slurm_pipe:,.0f}",
            "a local worker",
            f"{local_pipe:,.0f}",
        ),
    ]
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
