"""map() over an environment with several workers: results in order, work spread out.

The `pool` environment declares `workers: 2`, so at most two calls run at once, each in a
worker process of its own. Task.map() submits ahead (twice the workers) and yields results in
the order of the inputs, like concurrent.futures' Executor.map.

Run it from the repository's root:  python examples/parallel_map.py
"""

from __future__ import annotations

import time
from pathlib import Path

import envrunner

MANIFEST = Path(__file__).resolve().parent.parent / "environments" / "examples.yaml"


@envrunner.task(env="pool")
def slow_square(x):  # type: ignore[no-untyped-def]
    """Pretend to work for 0.2 s; say which worker did it."""
    import os
    import time

    time.sleep(0.2)
    return x * x, os.getpid()


def main() -> int:
    with envrunner.Runner(MANIFEST) as runner:
        slow_square(0)  # start a worker (and build the environment on the first run)
        started = time.perf_counter()
        results = list(slow_square.map(range(10)))
        elapsed = time.perf_counter() - started
        squares = [square for square, _ in results]
        workers = sorted({pid for _, pid in results})
        print(f"squares: {squares}")
        print(f"10 calls of 0.2 s each took {elapsed:.1f} s on {len(workers)} workers {workers}")
        print(f"workers now: {runner.worker_pids('pool')}")
    return 0 if squares == [x * x for x in range(10)] else 1


if __name__ == "__main__":
    raise SystemExit(main())
