"""100 MB round trips to a worker: each result dropped, against results kept in a list.

    python benchmarks/probes/kept_arrays.py [--calls 8]

Prints every round trip's rate (2 x 100 MB / time), slowest last, and the median; the rounds
alternate drop, keep, drop, keep. The second "keep" round reuses the blocks the first one gave
back when its list was dropped.
"""

from __future__ import annotations

import argparse
import time

from _env import manifest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=8)
    calls = parser.parse_args().calls
    path = manifest()
    import bench_tasks
    import numpy as np

    import envrunner

    array = np.random.default_rng(1).random(100_000_000 // 8)
    with envrunner.Runner(path, progress=False) as runner:
        runner.prepare()
        for _ in range(2):
            back = runner.call("same", bench_tasks.echo, array)
            del back
        for pattern in ("drop", "keep", "drop", "keep"):
            kept = []
            rates = []
            for _ in range(calls):
                begin = time.perf_counter()
                back = runner.call("same", bench_tasks.echo, array)
                rates.append(2 * array.nbytes / (time.perf_counter() - begin) / 1e9)
                if pattern == "keep":
                    kept.append(back)
                del back
            rates.sort(reverse=True)
            listed = " ".join(f"{rate:.1f}" for rate in rates)
            print(f"{pattern}: {listed} GB/s; median {rates[len(rates) // 2]:.2f}")
            del kept


if __name__ == "__main__":
    main()
