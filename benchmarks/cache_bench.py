"""The result cache against joblib.Memory on the same calls: hits, and what a miss adds.

    python benchmarks/cache_bench.py                 # with an uncached envrunner call as base
    python benchmarks/cache_bench.py --no-envrunner  # the cache alone (no environment built)

Cases: one 100 MB float64 array argument, and small arguments (a short list and a float). The
function returns a float, stored as its pickle (the stand-in for the worker's encoded result).

- **hit**: envrunner is ``call_key`` (function identity, argument digest, environment facts)
  plus ``ResultCache.get`` plus decoding the payload; joblib is calling the ``Memory.cache``d
  function again. Target: at most half of joblib's time with the array, under 1 ms with small
  arguments.
- **miss overhead**: ``call_key`` plus ``ResultCache.put`` of a new entry, over the uncached
  envrunner call of the same task (same-Python environment with numpy, built here with the
  default installer), and ``call_key`` alone (when the store runs off the caller's path).
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
    parser.add_argument("--repeat", type=int, default=11, help="samples per large case (11)")
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
    key_ms_of: dict[str, float] = {}
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

        # a miss stores a new entry: keys not stored before (another environment key)
        fresh = [
            call_key(total, call_args, {}, EnvFacts(env.name, f"k{i}", env.python, env.packages))
            for i in range(repeat)
        ]
        pending = iter(fresh)
        put_ms = median_ms(lambda k=pending, p=payload: cache.put(next(k), p), repeat)
        cache.put(call_key(total, call_args, {}, env), payload)
        keys_puts[case] = key_ms + put_ms
        key_ms_of[case] = key_ms
        assert ours() == result
        hit_ms = median_ms(ours, repeat)
        joblib_ms = median_ms(lambda a=call_args: cached_total(*a), repeat)
        rows.append((case, "hit: envrunner", hit_ms, f"{hit_ms / joblib_ms:.2f}x joblib"))
        rows.append((case, "hit: joblib.Memory", joblib_ms, "1.00x"))
        rows.append((case, "miss: key", key_ms, ""))
        rows.append((case, "miss: store", put_ms, "a new entry"))

    if not args.no_envrunner:
        for case, ms in _uncached(tmp, cases).items():
            with_store, key_only = keys_puts[case] / ms, key_ms_of[case] / ms
            note = f"miss adds {with_store:.0%}; {key_only:.0%} if stored off the caller's path"
            rows.append((case, "uncached envrunner call", ms, note))

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
