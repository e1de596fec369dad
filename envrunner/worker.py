"""``python -m envrunner.worker``: the entry point of a worker process (see _runtime/worker.py).

``--append-path FOLDER`` (repeatable) puts a folder at the end of the import path before the
runtime imports its packages: that is how an interpreter used as it is gets the worker runtime
(pyzmq, msgpack, cloudpickle) without anything being installed into it.
"""

import sys


def _append_paths(argv: "list[str]") -> None:
    for flag, value in zip(argv, argv[1:]):  # noqa: B905, RUF007 - parses on Python 3.9
        if flag == "--append-path" and value not in sys.path:
            sys.path.append(value)


if __name__ == "__main__":
    _append_paths(sys.argv[1:])
    from envrunner._runtime.worker import main

    raise SystemExit(main())
