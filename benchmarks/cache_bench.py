"""The result cache against joblib.Memory on the same calls: hits, and what a miss adds.

    python benchmarks/cache_bench.py                 # with an uncached envrunner call as base
    python benchmarks/cache_bench.py --no-envrunner  # the cache alone (no environment built)

Cases: one 100 MB float64 array argument, and small arguments (a short list and a float). The
function returns a float, stored as its pickle (the stand-in for the worker's encoded result).

- **hit**: envrunner is ``call_key`` (function identity, argument digest, environment facts)
  plus ``ResultCache.get`` plus decoding the payload; joblib is calling the ``Memory.cache``d
  function again. Target: at most half of joblib's time with the array, under 1 ms with small
  arguments.
- **miss overhead**: ``call_key`` plus ``ResultCache.put``, over the uncached envrunner call of
  the same task (same-Python environment with numpy, built here with the default installer).
  Target: at most 20%.

Needs joblib and numpy (``pip install -e '.[bench]'``). Times are medians; one run prints one
table.
"""

from __future__ import annotations

import argparse
import os
import pickle
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


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        begin = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - begin)
    return statistics.median(samples) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="samples per large case (7)")
    parser.add_argument("--no-envrunner", action="store_true", help="skip the uncached call")
    args = parser.parse_args()

    import joblib
    import numpy as np

    from envrunner._cache import EnvFacts, ResultCache, call_key

    tmp = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    cache = ResultCache(tmp / "envrunner", max_bytes=10**10)
    memory = joblib.Memory(tmp / "joblib", verbose=0)
    cached_total = memory.cache(total)
    env = EnvFacts("same", "0123456789abcdef", sys.version.split()[0], _packages())

    big = np.random.default_rng(1).random(100 * MB // 8)
    small: tuple[Any, ...] = ([1.0, 2.0, 3.0], 2.0)
    cases = {"100 MB array": ((big,), args.repeat), "small arguments": (small, 2000)}

    rows: list[tuple[str, str, float, str]] = []
    keys_puts: dict[str, float] = {}
    for case, (call_args, repeat) in cases.items():
        result = total(*call_args)
        cached_total(*call_args)  # joblib's miss: fills its cache

        def ours(call_args: tuple[Any, ...] = call_args) -> float:
            hit = cache.get(call_key(total, call_args, {}, env))
            assert hit is not None
            value: float = pickle.loads(hit.payload)
            return value

        key_ms = median_ms(lambda a=call_args: call_key(total, a, {}, env), repeat)
        payload = pickle.dumps(result, protocol=5)
        key = call_key(total, call_args, {}, env)
        put_ms = median_ms(lambda k=key, p=payload: cache.put(k, p), repeat)
        keys_puts[case] = key_ms + put_ms
        assert ours() == result
        hit_ms = median_ms(ours, repeat)
        joblib_ms = median_ms(lambda a=call_args: cached_total(*a), repeat)
        rows.append((case, "hit: envrunner", hit_ms, f"{hit_ms / joblib_ms:.2f}x joblib"))
        rows.append((case, "hit: joblib.Memory", joblib_ms, "1.00x"))
        rows.append((case, "miss: key + store", key_ms + put_ms, f"key {key_ms:.3f} ms"))

    if not args.no_envrunner:
        for case, ms in _uncached(tmp, cases).items():
            overhead = keys_puts[case] / ms
            rows.append((case, "uncached envrunner call", ms, f"miss adds {overhead:.0%}"))

    print(f"Python {sys.version.split()[0]}, joblib {joblib.__version__}, numpy {np.__version__}")
    print(f"{'CASE':<17} {'WHAT':<25} {'MEDIAN ms':>10}  NOTE")
    for case, what, ms, note in rows:
        print(f"{case:<17} {what:<25} {ms:>10.3f}  {note}")
    return 0


def _packages() -> dict[str, str]:
    from importlib import metadata

    return {d.metadata["Name"]: d.version for d in metadata.distributions() if d.metadata["Name"]}


def _uncached(tmp: Path, cases: dict[str, tuple[tuple[Any, ...], int]]) -> dict[str, float]:
    """The same task through envrunner without a cache, in a same-Python environment."""
    import envrunner

    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    manifest = tmp / "environments.yaml"
    manifest.write_text(
        f'version: 1\nenvironments:\n  same:\n    python: "{minor}"\n    requirements: ["numpy"]\n'
    )
    os.environ.setdefault("ENVRUNNER_HOME", str(tmp / "home"))
    found = {}
    remote_total = envrunner.task(env="same")(total)
    with envrunner.Runner(manifest, progress=False):
        for case, (call_args, repeat) in cases.items():
            remote_total(*call_args)  # starts the worker
            found[case] = median_ms(lambda a=call_args: remote_total(*a), min(repeat, 200))
    return found


if __name__ == "__main__":
    sys.exit(main())
