"""Bulk data: numpy float64 arrays of 1, 10 and 100 MB sent to a worker and returned.

Every system echoes the same array; a round trip moves it there and back, so the rate is
``2 * size / round-trip time``. Each round trip's result is checked once against the array
sent (warm-up), then timed. The in-process copy (the array copied twice) is the memory bound.

Each result is dropped before the next call in those cases. The cases "results kept" time
100 MB round trips whose results are kept in a list, as users write loops
(``results = [f(a) for ...]``, no ``del``): then no memory comes back between calls, and every
result needs pages the previous ones do not hold. The first list of each system is one case;
the later lists, made after the previous list was dropped (a loop run again), are another.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from harness import Bench, Section, interleave
from systems import Envrunner, MpPool, RawZmq, RayActors, System, make

import envrunner

NAME = "bulk"
TITLE = "2. Bulk data: numpy float64 array round trips"

MB = 1_000_000


KEPT = "100 MB array, results kept, first list"
KEPT_AGAIN = "100 MB array, results kept, later lists"


def case_name(megabytes: int) -> str:
    return f"{megabytes} MB array"


class InProcessCopy(System):
    """The memory bound: the array copied there and back within this process.

    Into buffers allocated (and touched) once, so that the copies run at memory speed rather
    than at the speed the kernel hands out new pages.
    """

    name = "in-process copy x2 (memory bound)"

    def __init__(self) -> None:
        self.there: Any = None
        self.back: Any = None

    def call(self, value: Any) -> Any:
        import numpy as np

        if self.there is None or self.there.shape != value.shape:
            self.there, self.back = np.empty_like(value), np.empty_like(value)
        np.copyto(self.there, value)
        np.copyto(self.back, self.there)
        return self.back


def run(bench: Bench, section: Section) -> None:
    manifest = bench.core_manifest()
    with envrunner.Runner(manifest, progress=False) as runner:
        bench.prepare(runner, section, "rate = 2 x array size / round-trip time")
        systems: list[System] = [InProcessCopy(), RawZmq(sys.executable, bench.tmp, 1)]
        systems.append(Envrunner(runner, "same", f"envrunner (Python {bench.caller_minor}, same)"))
        if bench.other_minor is not None:
            systems.append(
                Envrunner(runner, "other", f"envrunner (Python {bench.other_minor}, other)")
            )
        systems.append(MpPool(1))
        ray = make(lambda: RayActors(bench.tmp / "ray", 1), section.skip, "Ray object store")
        if ray is not None:
            ray.name = "Ray object store"
            systems.append(ray)
        try:
            _rounds(bench, section, systems)
            _kept(bench, section, [s for s in systems if not isinstance(s, InProcessCopy)])
        finally:
            for system in systems:
                system.close()


def _kept(bench: Bench, section: Section, systems: list[System]) -> None:
    """100 MB round trips whose results stay in a list until the round ends.

    The first round's list needs memory no earlier result gave back; the later rounds' lists
    come after the previous list was dropped, as in a loop run again. Each is its own case.
    """
    import numpy as np

    array = np.random.default_rng(9).random(100 * MB // 8)
    per_round = bench.count(6, 3)
    times: dict[str, list[list[float]]] = {s.name: [[], []] for s in systems}
    for index, system in interleave(bench.count(3, 1), systems):
        results = []
        out = times[system.name][min(index, 1)]
        for _ in range(per_round):
            begin = time.perf_counter()
            results.append(system.call(array))
            out.append(time.perf_counter() - begin)
        if not np.array_equal(results[0], array):
            raise AssertionError(f"{system.name} returned another array")
        del results
    for case, which in ((KEPT, 0), (KEPT_AGAIN, 1)):
        for system in systems:
            seconds = times[system.name][which]
            if not seconds:
                continue
            middle = sorted(seconds)[len(seconds) // 2] * 1000
            section.add(
                case,
                system.name,
                "GB/s",
                [2 * array.nbytes / s / 1e9 for s in seconds],
                baseline=system.name == "raw pyzmq",
                note=f"round trip {middle:.1f} ms; {per_round} results kept per list",
            )


def _rounds(bench: Bench, section: Section, systems: list[System]) -> None:
    """1, 10 and 100 MB round trips, each result dropped before the next call."""
    import numpy as np

    rng = np.random.default_rng(8)
    for megabytes, full, quick in ((1, 100, 15), (10, 30, 5), (100, 8, 3)):
        array = rng.random(megabytes * MB // 8)
        for system in systems:
            for _ in range(2 if megabytes < 100 else 1):
                back = system.call(array)
            if not np.array_equal(back, array):
                raise AssertionError(f"{system.name} returned another array")
            del back
        times: dict[str, list[float]] = {s.name: [] for s in systems}
        for _, system in interleave(bench.count(full, quick), systems):
            begin = time.perf_counter()
            back = system.call(array)
            times[system.name].append(time.perf_counter() - begin)
            del back
        for system in systems:
            seconds = times[system.name]
            rates = [2 * array.nbytes / s / 1e9 for s in seconds]
            middle = sorted(seconds)[len(seconds) // 2] * 1000
            section.add(
                case_name(megabytes),
                system.name,
                "GB/s",
                rates,
                baseline=system.name == "raw pyzmq",
                note=f"round trip {middle:.1f} ms",
            )
