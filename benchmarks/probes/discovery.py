"""Finding the interpreter for ``python: "3.11"`` in a new ``ENVRUNNER_HOME``, then again.

    python benchmarks/probes/discovery.py [VERSION]

The first lookup probes the candidates (nothing is cached in the new home); the second reads
the answers cached on disk (the in-process memo cleared). Prints both times and the choice.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time


def main() -> None:
    version = sys.argv[1] if len(sys.argv) > 1 else f"{sys.version_info[0]}.{sys.version_info[1]}"
    os.environ["ENVRUNNER_HOME"] = tempfile.mkdtemp(prefix="er-probe-home-")
    import envrunner._interpreter_search as search
    from envrunner._interpreters import find_interpreter

    begin = time.perf_counter()
    found = find_interpreter(version)
    first = time.perf_counter() - begin
    search._discovered.clear()
    begin = time.perf_counter()
    find_interpreter(version)
    cached = time.perf_counter() - begin
    print(f"first {first * 1000:.0f} ms, cached {cached * 1000:.1f} ms: {found.path}")


if __name__ == "__main__":
    main()
