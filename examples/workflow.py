"""A workflow across four environments: prepare, train two models in parallel, compare.

    prepare (prep) ──┬─► fit_line (fit_line, Python 3.11, six 1.15) ──┐
                     └─► fit_mean (fit_mean, Python 3.13, six 1.16) ──┴─► compare (report)

Each arrow is a future passed as an argument: ``submit`` returns at once, and each call is sent
when its inputs are done, without this script waiting in between. Both fits run at once. A
failed step fails only what depends on it (a ``DependencyError`` that names it): the other
branch still finishes and is stored.

Every task has ``cache=True``: run the script twice and the second run does no work; edit one
step (``MEAN_SHRINK``, say) and only that step and what follows it run again, because a call
given a future is keyed by the call that makes it, not only by its value.

Each task appends its name to ``$WORKFLOW_LOG`` when it runs (the tests count runs with it).

Run it from the repository's root:  python examples/workflow.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import envrunner

MANIFEST = Path(__file__).resolve().parent.parent / "environments" / "workflow.yaml"
MEAN_SHRINK = 0.0  # fit_mean pulls its mean this far towards zero (edit it: only it re-runs)


def _ran(step: str) -> None:
    """Note a real run (not a cached one) where the tests can count it."""
    log = os.environ.get("WORKFLOW_LOG")
    if log:
        with open(log, "a") as file:
            file.write(step + "\n")


@envrunner.task(env="prep", cache=True)
def prepare(n, seed):  # type: ignore[no-untyped-def]
    """n noisy points on y = 3x + 2, split into training and held-out halves."""
    import random

    from more_itertools import partition

    _ran("prepare")
    rng = random.Random(seed)
    points = [(x / n, 3 * x / n + 2 + rng.gauss(0, 0.1)) for x in range(n)]
    held, train = partition(lambda p: rng.random() < 0.7, points)
    return {"train": list(train), "held": list(held)}


@envrunner.task(env="fit_line", cache=True)
def fit_line(data):  # type: ignore[no-untyped-def]
    """Least squares: slope and intercept."""
    import six

    _ran("fit_line")
    xs, ys = [x for x, _ in data["train"]], [y for _, y in data["train"]]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in data["train"]) / sum((x - mx) ** 2 for x in xs)
    return {"slope": slope, "intercept": my - slope * mx, "six": six.__version__}


@envrunner.task(env="fit_mean", cache=True)
def fit_mean(data):  # type: ignore[no-untyped-def]
    """A flat line at the (shrunk) mean; pauses where $WORKFLOW_PAUSE says (a test kills it)."""
    import time

    import six

    _ran("fit_mean")
    pause = os.environ.get("WORKFLOW_PAUSE")
    if pause:
        Path(pause, "fit_mean.pid").write_text(str(os.getpid()))
        while not Path(pause, "go").exists():
            time.sleep(0.05)
    ys = [y for _, y in data["train"]]
    return {
        "slope": 0.0,
        "intercept": (1 - MEAN_SHRINK) * sum(ys) / len(ys),
        "six": six.__version__,
    }


@envrunner.task(env="report", cache=True)
def compare(data, models):  # type: ignore[no-untyped-def]
    """Each model's mean squared error on the held-out points, as a table."""
    from tabulate import tabulate

    _ran("compare")
    rows = []
    for name, model in models.items():
        errors = [(model["slope"] * x + model["intercept"] - y) ** 2 for x, y in data["held"]]
        rows.append([name, model["six"], round(sum(errors) / len(errors), 4)])
    return tabulate(sorted(rows, key=lambda r: r[2]), headers=["model", "six", "mse"])


def main() -> int:
    with envrunner.Runner(MANIFEST):
        data = prepare.submit(400, seed=7)
        models = {"line": fit_line.submit(data), "mean": fit_mean.submit(data)}
        table = compare.submit(data, models)  # all four submitted: nothing has run yet
        failed = 0
        for name, future in [*models.items(), ("compare", table)]:
            error = future.exception()
            if error is not None:
                failed += 1
                print(f"{name}: failed: {type(error).__name__}: {error}")
            elif name != "compare":
                model = future.result()
                print(f"{name}: y = {model['slope']:.3f} x + {model['intercept']:.3f}")
        if not failed:
            print(table.result())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
