"""The result cache through ``@envrunner.task(cache=True)``, against joblib.Memory on the same
calls: hits, and what a miss adds to an uncached call.

    python benchmarks/cache_bench.py            # about a minute; builds a numpy environment
    python benchmarks/cache_bench.py --cache-dir /dev/shm/results   # the store on tmpfs

Cases: one 100 MB float64 array argument, and small arguments (a short list and a float). The
task sums its argument and returns a float; it runs in a same-Python environment with numpy.

- **hit**: calling the cached task again, end to end (function identity, argument digest, the
  lookup, decoding the stored answer; no worker); joblib is calling its ``Memory.cache``d
  function again. Targets: at most half of joblib's time with the array; under 1 ms with small
  arguments.
- **miss**: calling the cached task with a ``scale`` not used before (a new key; the argument
  digest is the same work), against calling the same task without a cache with the same
  arguments. The store runs after the result is handed back, on the runner's writer thread;
  each sample waits for it (untimed) before the next. **back to back**: the same without that
  wait, so each store overlaps the next call. Target: at most 20% over the uncached call.
- **key**: the identity and argument digests alone (``call_inputs``), the part of a miss that
  grows with the arguments.

Needs joblib and numpy (``pip install -e '.[bench]'``). Times are medians; one run prints one
table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MB = 1 << 20


def total(x: Any, scale: float = 1.0) -> float:
    """The task: cheap next to moving its argument, so overheads show."""
    import numpy as np

    return float(np.sum(x)) * scale


def median_ms(
    fn: Callable[[], Any], repeat: int, between: Callable[[], Any] | None = None
) -> float:
    samples = []
    for _ in range(repeat):
        if between is not None:
            between()  # untimed
        begin = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - begin)
    return statistics.median(samples) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=11, help="samples per large case (11)")
    parser.add_argument("--cache-dir", help="the result cache's folder (default: a temporary one)")
    args = parser.parse_args()

    import joblib
    import numpy as np

    tmp = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    os.environ.setdefault("ENVRUNNER_HOME", str(tmp / "home"))
    os.environ["ENVRUNNER_CACHE"] = args.cache_dir or str(tmp / "envrunner")

    import envrunner
    from envrunner._cached import results_of
    from envrunner._callkey import call_inputs

    memory = joblib.Memory(tmp / "joblib", verbose=0)
    joblib_total = memory.cache(total)
    big = np.random.default_rng(1).random(100 * MB // 8)
    small: tuple[Any, ...] = ([1.0, 2.0, 3.0], 2.0)
    cases = {"100 MB array": ((big,), args.repeat), "small arguments": (small, 500)}

    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    manifest = tmp / "environments.yaml"
    manifest.write_text(
        f'version: 1\nenvironments:\n  same:\n    python: "{minor}"\n    requirements: ["numpy"]\n'
    )
    rows: list[tuple[str, str, float, str]] = []
    with envrunner.Runner(manifest, progress=False) as runner:
        plain = envrunner.task(env="same")(total)
        cached = envrunner.task(env="same", cache=True)(total)
        for case, (call_args, repeat) in cases.items():
            expected = total(*call_args)
            joblib_total(*call_args)  # joblib's miss: fills its cache
            plain(*call_args)  # starts the worker
            assert cached(*call_args) == expected  # builds nothing new, reads the packages
            results = results_of(runner)
            x = call_args[0]
            scales = iter(range(int(time.time()), 10**12))  # new keys, even in a kept folder

            def fresh(task: Any, x: Any = x, scales: Any = scales) -> Callable[[], Any]:
                return lambda: task(x, float(next(scales)))

            uncached_ms = median_ms(fresh(plain), repeat)
            miss_ms = median_ms(fresh(cached), repeat, between=results.flush)
            back_ms = median_ms(fresh(cached), repeat)
            results.flush()
            hit_ms = median_ms(lambda a=call_args: cached(*a), repeat)
            joblib_ms = median_ms(lambda a=call_args: joblib_total(*a), repeat)
            key_ms = median_ms(lambda a=call_args: call_inputs(total, a, {}), repeat)
            adds, back = miss_ms / uncached_ms - 1, back_ms / uncached_ms - 1
            rows.append((case, "hit: envrunner task", hit_ms, f"{hit_ms / joblib_ms:.2f}x joblib"))
            rows.append((case, "hit: joblib.Memory", joblib_ms, "1.00x"))
            rows.append((case, "uncached task call", uncached_ms, ""))
            rows.append((case, "miss: cached task call", miss_ms, f"adds {adds:.0%}"))
            rows.append((case, "miss: back to back", back_ms, f"adds {back:.0%}"))
            rows.append((case, "key (call_inputs)", key_ms, f"{key_ms / uncached_ms:.0%}"))

    print(f"Python {sys.version.split()[0]}, joblib {joblib.__version__}, numpy {np.__version__}")
    print(f"{'CASE':<17} {'WHAT':<25} {'MEDIAN ms':>10}  NOTE")
    for case, what, ms, note in rows:
        print(f"{case:<17} {what:<25} {ms:>10.3f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
