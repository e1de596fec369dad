"""A Python 3.9 environment pinned to an old numpy, next to Python 3.13 with numpy 2.

numpy 1.21 has no wheels for Python 3.13 and numpy 2 none for 3.9: no single environment holds
both. The same function runs in each (sent as source code, since neither runs this script's
Python), and their answers are compared here.

Run it from the repository's root:  python examples/legacy_and_latest.py
"""

from __future__ import annotations

from pathlib import Path

import envrunner

MANIFEST = Path(__file__).resolve().parent.parent / "environments" / "examples.yaml"


def describe(values):  # type: ignore[no-untyped-def]
    """Runs in each environment: which Python and numpy, and what they compute."""
    import platform

    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mean": float(array.mean()),
        "std": float(array.std()),
    }


def main() -> int:
    values = [1.5, 2.5, 4.0, 8.0]
    with envrunner.Runner(MANIFEST) as runner:
        old = runner.submit("legacy", describe, values)
        new = runner.submit("latest", describe, values)
        for name, answer in (("legacy", old.result()), ("latest", new.result())):
            print(
                f"{name:7} Python {answer['python']:7} numpy {answer['numpy']:7} "
                f"mean {answer['mean']:.3f} std {answer['std']:.3f}"
            )
        same = old.result()["mean"] == new.result()["mean"]
        print(f"both agree: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
