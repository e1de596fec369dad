"""Where a synchronous call's time goes in the caller: deterministic timers, not sampling.

    python benchmarks/profile_sync.py [--calls N] [--python 3.12]

Wraps the caller-side functions a ``task(1)`` call runs through with ``perf_counter_ns`` timers
(a fraction of a microsecond each), makes 20,000 calls to a warm worker and prints each
function's median. These are private functions: a name that no longer exists is skipped with a
line saying so. For the worker's side, sample it while this runs::

    py-spy record --idle -r 400 -d 5 -f raw -o worker.txt -p <worker pid printed here>
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: (module, class or None, function, what it does)
TIMED = [
    ("envrunner._api", "Task", "__call__", "the whole call"),
    ("envrunner._api", "Runner", "_pending", "encode arguments, make the future and the record"),
    ("envrunner._broker", "Broker", "checkout", "take an idle worker"),
    ("envrunner._direct", None, "pack", "message header and its HMAC"),
    ("envrunner._broker", "Broker", "_wait_direct", "wait for the answer (poll, recv, unpack)"),
    ("envrunner._direct", None, "unpack", "check the answer's HMAC, read its header"),
    ("envrunner._runtime.protocol", "Verifier", "verify", "HMAC check, header msgpack"),
    ("envrunner._broker", "Broker", "_give_back", "book the result, give the worker back"),
    ("envrunner._workers", "WorkerHandle", "pending_output", "look for unforwarded output"),
    ("envrunner._api", "CallFuture", "_decoded", "decode the result"),
]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/profile_sync.py")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--python", default=f"{sys.version_info[0]}.{sys.version_info[1]}")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    folder = Path(tempfile.mkdtemp(prefix="erprof-"))
    os.environ["ENVRUNNER_HOME"] = str(folder / "home")
    manifest = folder / "environments.yaml"
    environments = {"p": {"python": args.python, "requirements": []}}
    manifest.write_text(json.dumps({"version": 1, "environments": environments}))

    import importlib

    import bench_tasks

    import envrunner

    times: dict[str, list[int]] = collections.defaultdict(list)
    labels = []
    for module_name, owner_name, name, what in TIMED:
        module = importlib.import_module(module_name)
        owner: Any = getattr(module, owner_name) if owner_name else module
        if owner is None or not hasattr(owner, name):
            print(f"skipped {module_name}.{owner_name or ''}.{name}: no longer there")
            continue
        label = f"{owner_name + '.' if owner_name else ''}{name} ({what})"
        labels.append(label)
        setattr(owner, name, _timed(getattr(owner, name), times[label]))

    with envrunner.Runner(manifest, progress=False) as runner:
        task = envrunner.task(env="p")(bench_tasks.echo)
        for _ in range(1000):
            task(1)
        print(f"worker pid: {runner.worker_pids('p')}", flush=True)
        for samples in times.values():
            samples.clear()
        for _ in range(args.calls):
            task(1)
    shutil.rmtree(folder, ignore_errors=True)
    for label in sorted(labels, key=lambda key: -statistics.median(times[key] or [0])):
        if times[label]:
            print(f"{statistics.median(times[label]) / 1000:8.1f} us  {label}")
        else:  # patched where the call path no longer looks it up: fix TIMED
            print(f"   never called  {label}")
    return 0


def _timed(function: Any, out: list[int]) -> Any:
    clock = time.perf_counter_ns

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        begin = clock()
        try:
            return function(*args, **kwargs)
        finally:
            out.append(clock() - begin)

    return timed


if __name__ == "__main__":
    raise SystemExit(main())
