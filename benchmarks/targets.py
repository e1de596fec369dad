"""The targets of issues #8 and #14, checked against the rows of the same run.

Each verdict is ``PASS`` or ``MISS`` with the measured ratio or value; a target whose rows were
not measured (section not run, alternative not installed) is left out. Ray's object store is
compared with its rate measured in this run, or, where Ray is not installed, with the rate it
reached on the machine of docs/performance.md (``RAY_PUBLISHED_GBS``), which says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import Row, Section

#: Ray's object store, 100 MB round trips, measured at 1e95fe3 (docs/performance.md).
RAY_PUBLISHED_GBS = 7.84


def _envrunner_rows(section: Section, case: str) -> list[Row]:
    return [r for r in section.rows if r.case == case and r.system.startswith("envrunner")]


def _one(section: Section | None, case: str, system: str) -> Row | None:
    return section.find(case, system) if section is not None else None


def evaluate(sections: dict[str, Section]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def verdict(target: str, measured: str, limit: str, ok: bool) -> None:
        out.append({"target": target, "measured": measured, "limit": limit, "verdict": _word(ok)})

    calls = sections.get("calls")
    if calls is not None:
        _calls(calls, verdict)
    bulk = sections.get("bulk")
    if bulk is not None:
        _bulk(bulk, verdict)
    start = sections.get("start")
    if start is not None:
        for row in start.rows:
            if row.system == "envrunner: first call, new Runner" and row.ratio is not None:
                verdict(
                    f"worker start, {row.case}: at most 1.2x `python -c 'import zmq, msgpack, "
                    "cloudpickle'`",
                    f"{row.ratio:.2f}x ({row.median:.0f} ms)",
                    "<= 1.2x",
                    row.ratio <= 1.2,
                )
    builds = sections.get("builds")
    if builds is not None:
        for row in builds.rows:
            if row.system == "envrunner build" and row.case.startswith("uv") and row.ratio:
                verdict(
                    f"build with {row.case}: at most 1.2x the same uv commands by hand",
                    f"{row.ratio:.2f}x ({row.median:.2f} s)",
                    "<= 1.2x",
                    row.ratio <= 1.2,
                )
            if row.case == "cache hit" and row.system.startswith("envrunner"):
                ms = row.median if row.unit == "ms" else row.median * 1000
                verdict(
                    f"{row.case}, {row.system}: under 50 ms",
                    f"{ms:.1f} ms",
                    "< 50 ms",
                    ms < 50,
                )
    scale = sections.get("scale")
    if scale is not None:
        for row in scale.rows:
            if row.case.startswith("idle worker RSS") and row.system.startswith("envrunner"):
                verdict(
                    f"{row.case}: under 40 MB",
                    f"{row.median:.1f} MB",
                    "< 40 MB",
                    row.median < 40,
                )
    return out


def _word(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _calls(calls: Section, verdict: Callable[[str, str, str, bool], None]) -> None:
    from sections.calls import SYNC, pipelined_case

    pool = _one(calls, SYNC, "multiprocessing.Pool")
    ray = _one(calls, SYNC, "Ray tasks")
    for row in _envrunner_rows(calls, SYNC):
        if row.ratio is not None:
            verdict(
                f"sync call p50, {row.system}: at most 1.5x raw pyzmq ipc",
                f"{row.ratio:.2f}x ({row.median:.0f} us)",
                "<= 1.5x",
                row.ratio <= 1.5,
            )
        if pool is not None:
            verdict(
                f"sync call p50, {row.system}: no slower than multiprocessing.Pool.apply",
                f"{row.median / pool.median:.2f}x ({row.median:.0f} vs {pool.median:.0f} us)",
                "<= 1.0x",
                row.median <= pool.median,
            )
        ray_text = f"; Ray tasks here: {ray.median:.0f} us" if ray is not None else ""
        verdict(
            f"sync call p50, {row.system}: a tenth of Ray's published 1 ms task round trip",
            f"{row.median:.0f} us{ray_text}",
            "<= 100 us",
            row.median <= 100,
        )
    for workers in (1, 2):
        case = pipelined_case(workers)
        pool = _one(calls, case, "multiprocessing.Pool")
        for row in _envrunner_rows(calls, case):
            if row.ratio is not None:
                verdict(
                    f"{case} throughput, {row.system}: at least 50% of raw pyzmq",
                    f"{row.ratio:.0%} ({row.median:,.0f} calls/s)",
                    ">= 50%",
                    row.ratio >= 0.5,
                )
            if pool is not None:
                verdict(
                    f"{case} throughput, {row.system}: at least multiprocessing.Pool's",
                    f"{row.median / pool.median:.2f}x ({row.median:,.0f} vs "
                    f"{pool.median:,.0f} calls/s)",
                    ">= 1.0x",
                    row.median >= pool.median,
                )
    _more_calls(calls, verdict)


def _more_calls(calls: Section, verdict: Callable[[str, str, str, bool], None]) -> None:
    from sections.calls import (
        CHUNKSIZES,
        REMOTE_SYNC,
        SLEEPING,
        map_case,
        sleeping_system,
    )

    two = _one(calls, SLEEPING, sleeping_system(2))
    if two is not None and two.ratio is not None:
        verdict(
            f"{SLEEPING}: 2 workers at least 1.7x 1 worker",
            f"{two.ratio:.2f}x ({two.median:,.0f} calls/s)",
            ">= 1.7x",
            two.ratio >= 1.7,
        )
    for chunksize in CHUNKSIZES:
        for row in _envrunner_rows(calls, map_case(chunksize)):
            if row.ratio is not None:
                verdict(
                    f"{map_case(chunksize)}, {row.system}: at least multiprocessing.Pool.map's",
                    f"{row.ratio:.2f}x ({row.median:,.0f} items/s)",
                    ">= 1.0x",
                    row.ratio >= 1.0,
                )
    for row in _envrunner_rows(calls, REMOTE_SYNC):
        if row.ratio is not None:
            verdict(
                f"{REMOTE_SYNC} p50, {row.system}: at most 1.5x raw pyzmq over tcp with Curve",
                f"{row.ratio:.2f}x ({row.median:.0f} us)",
                "<= 1.5x",
                row.ratio <= 1.5,
            )


def _bulk(bulk: Section, verdict: Callable[[str, str, str, bool], None]) -> None:
    from sections.bulk import KEPT, KEPT_AGAIN, case_name

    cases = (
        (case_name(100), "each result dropped"),
        (KEPT, "results kept, first list"),
        (KEPT_AGAIN, "results kept, later lists"),
    )
    for case, what in cases:
        ray = _one(bulk, case, "Ray object store")
        ray_rate = ray.median if ray is not None else RAY_PUBLISHED_GBS
        source = "" if ray is not None else ", Ray's rate of docs/performance.md: not installed"
        for row in _envrunner_rows(bulk, case):
            verdict(
                f"100 MB round trip ({what}), {row.system}: at least as fast as Ray's object "
                f"store{source}",
                f"{row.median / ray_rate:.2f}x ({row.median:.2f} vs {ray_rate:.2f} GB/s)",
                ">= 1.0x",
                row.median >= ray_rate,
            )
            if row.ratio is not None and case == case_name(100):
                verdict(
                    f"100 MB round trip, {row.system}: 5x raw pyzmq frames",
                    f"{row.ratio:.2f}x ({row.median:.2f} GB/s)",
                    ">= 5x",
                    row.ratio >= 5,
                )
