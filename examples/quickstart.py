"""Quickstart: call functions in two environments that cannot share one interpreter.

`legacy` is Python 3.9 with numpy 1.x and six 1.15; `modern` is Python 3.12 with numpy 2.x and
six 1.16 (see environments/quickstart.yaml). This script runs on neither: it calls into both,
and hands a numpy array made under numpy 1 to a function running under numpy 2.

Run it from the repository's root:  python examples/quickstart.py
The first run builds both environments (a few seconds with uv); later runs reuse them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import envrunner

MANIFEST = Path(__file__).resolve().parent.parent / "environments" / "quickstart.yaml"


@envrunner.task(env="legacy")
def make_measurements(n: int):  # type: ignore[no-untyped-def]
    """Runs on Python 3.9 with numpy 1.x: simulate n noisy measurements of three sensors."""
    import platform

    import numpy as np
    import six

    rng = np.random.default_rng(seed=7)
    data = rng.normal(loc=[1.0, 2.0, 3.0], scale=0.1, size=(n, 3))
    saw = f"Python {platform.python_version()}, numpy {np.__version__}, six {six.__version__}"
    return saw, data


@envrunner.task(env="modern")
def summarize(data):  # type: ignore[no-untyped-def]
    """Runs on Python 3.12 with numpy 2.x: describe the array it was given."""
    import platform

    import numpy as np
    import six

    saw = f"Python {platform.python_version()}, numpy {np.__version__}, six {six.__version__}"
    means = np.round(data.mean(axis=0), 3).tolist()
    return saw, {"shape": list(data.shape), "dtype": str(data.dtype), "means": means}


def main() -> int:
    with envrunner.Runner(MANIFEST):
        legacy_saw, data = make_measurements(1000)
        print(f"legacy  ran on {legacy_saw}")
        print(f"        made a {data.dtype} array of shape {data.shape}")
        modern_saw, summary = summarize(data)
        print(f"modern  ran on {modern_saw}")
        print(f"        got {summary}")
        futures = [summarize.submit(data[i::2]) for i in range(2)]
        halves = [future.result()[1]["shape"] for future in futures]
        print(f"modern  summarized both halves at once (workers: 2): shapes {halves}")
    print(f"caller  ran on Python {sys.version.split()[0]}: none of the above")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
