"""The soak test: thousands of calls across environments while workers are killed at random.

Off by default (it runs for a minute or more). One command:

    python -m pytest -m soak tests/test_soak.py            # ENVRUNNER_SOAK_CALLS=20000 for more

Every call must end in its right result, or in ``WorkerCrashed`` naming SIGKILL (a worker the
killer shot while it ran the call); nothing else. Afterwards no worker process, file
descriptor, shared-memory segment or runtime folder may be left, and the caller's memory must
not have grown without bound.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import signal
import threading
import time
from pathlib import Path

import faults
import numpy
import pytest

import envrunner

pytestmark = pytest.mark.soak


def children() -> set[int]:
    """Pids of this process's live children."""
    found = set()
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("PPid", "").strip() == me and "Z" not in fields.get("State", ""):
            found.add(int(entry))
    return found


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_thousands_of_calls_with_random_worker_kills(manifest_path: Path) -> None:
    calls = int(os.environ.get("ENVRUNNER_SOAK_CALLS", "4000"))
    rng = random.Random(7)
    fds_before = set(os.listdir("/proc/self/fd"))
    outcomes: dict[str, int] = {"ok": 0, "killed": 0}
    wrong: list[str] = []
    stop = threading.Event()
    kills = 0

    with envrunner.Runner(manifest_path, progress=False) as runner:
        for env in ("same", "other", "modern"):
            runner.call(env, faults.add, 1, 1)  # builds done, workers warm
        rss_start = rss_mb()

        def killer() -> None:
            nonlocal kills
            while not stop.wait(rng.uniform(0.05, 0.3)):
                pids = runner.worker_pids()
                if pids:
                    try:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass

        def one(i: int) -> None:
            env = ("same", "other", "modern")[i % 3]
            try:
                if i % 10 == 0:
                    array = numpy.arange(100_000, dtype=numpy.float64)  # shared memory
                    value = runner.call(env, faults.sleep_then, 0, array)
                    ok = numpy.array_equal(value, array)
                elif i % 2:
                    ok = runner.call(env, faults.add, i, 1) == i + 1
                else:
                    ok = runner.submit(env, faults.add, i, 2).result(120) == i + 2
            except envrunner.WorkerCrashed as exc:
                if exc.signal != "SIGKILL":
                    wrong.append(f"call {i}: {exc}")
                outcomes["killed"] += 1
                return
            except Exception as exc:
                wrong.append(f"call {i}: {type(exc).__name__}: {exc}")
                return
            if ok:
                outcomes["ok"] += 1
            else:
                wrong.append(f"call {i}: wrong result")

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            list(pool.map(one, range(calls)))
        stop.set()
        thread.join()
        pids = runner.worker_pids()
        rss_end = rss_mb()
        rundir = runner.rundir

    assert wrong == [], wrong[:10]
    assert outcomes["ok"] + outcomes["killed"] == calls
    assert kills > 0 and outcomes["ok"] > calls // 2
    deadline = time.monotonic() + 10
    while children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children() == set(), "worker processes were left behind"
    assert not any(os.path.exists(f"/proc/{pid}") and pid in children() for pid in pids)
    assert set(os.listdir("/proc/self/fd")) <= fds_before | {str(fd) for fd in range(3)}
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"envrunner-{os.getpid()}-")]
    assert rundir is not None and not rundir.exists()
    assert rss_end - rss_start < 200, f"the caller grew from {rss_start:.0f} MB to {rss_end:.0f} MB"
    print(f"\nsoak: {calls} calls, {kills} kills, outcomes {outcomes}")
