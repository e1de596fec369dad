"""``map`` over 100,000 items with a chunksize, on one worker, against ``Pool(1).map``.

python benchmarks/probes/map_chunks.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

from _env import manifest

ITEMS = 100_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    path = manifest()
    import bench_tasks

    import envrunner

    with envrunner.Runner(path, progress=False) as runner:
        runner.prepare()
        list(runner.map("same", bench_tasks.inc, range(1000), chunksize=100))
        for chunksize in (100, 1000):
            for _ in range(rounds):
                begin = time.perf_counter()
                out = list(runner.map("same", bench_tasks.inc, range(ITEMS), chunksize=chunksize))
                seconds = time.perf_counter() - begin
                assert out[-1] == ITEMS
                print(f"envrunner  chunksize={chunksize}: {ITEMS / seconds:,.0f} items/s")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.map(bench_tasks.inc, range(1000), chunksize=100)
        for chunksize in (100, 1000):
            for _ in range(rounds):
                begin = time.perf_counter()
                pool.map(bench_tasks.inc, range(ITEMS), chunksize=chunksize)
                seconds = time.perf_counter() - begin
                print(f"Pool.map   chunksize={chunksize}: {ITEMS / seconds:,.0f} items/s")


if __name__ == "__main__":
    main()
