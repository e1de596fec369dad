"""``python -m envrunner.worker``: the entry point of a worker process (see _runtime/worker.py)."""

from envrunner._runtime.worker import main

if __name__ == "__main__":
    raise SystemExit(main())
