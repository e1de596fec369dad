"""The build-step watcher of ``envrunner._build_steps``, started alone, against its old form.

    python benchmarks/probes/build_watcher.py [--runs 30]

The old form imported ``subprocess`` and ``threading``; the new one imports built-in modules only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from envrunner._build_steps import _WATCHER

OLD = """\
import os, signal, subprocess, sys, threading
fd = int(sys.argv[1])
child = subprocess.Popen(sys.argv[2:])
def watch():
    while True:
        try:
            if not os.read(fd, 64):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    os.killpg(0, signal.SIGKILL)
threading.Thread(target=watch, daemon=True).start()
code = child.wait()
sys.exit(code if code >= 0 else 128 - code)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(runs):
        for name, script in (("old", OLD), ("new", _WATCHER)):
            read_fd, write_fd = os.pipe()
            begin = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", script, str(read_fd), "true"],
                pass_fds=(read_fd,),
                start_new_session=True,
            )
            os.close(read_fd)
            process.wait()
            times[name].append(time.perf_counter() - begin)
            os.close(write_fd)
    for name, samples in times.items():
        print(f"{name} watcher: median {statistics.median(samples) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
