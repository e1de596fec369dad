"""Functions defined right in the script (as in a notebook) run in other environments too.

- To an environment on this script's Python, a function of ``__main__``, a lambda or a closure
  travels by value (cloudpickle), with the globals it uses.
- To an environment on another Python, it travels as source code: its ``def`` and the
  ``__main__`` functions and plain data it uses are re-created there. A closure over local
  variables cannot stand alone; envrunner says so and what to change.

Run it from the repository's root:  python examples/notebook_style.py
"""

from __future__ import annotations

from pathlib import Path

import envrunner

MANIFEST = Path(__file__).resolve().parent.parent / "environments" / "examples.yaml"

SCALE = 3  # a global the functions below read: it travels with them


def scaled(x):  # type: ignore[no-untyped-def]
    return x * SCALE


def pipeline(values):  # type: ignore[no-untyped-def]
    """Uses another function of this script and a global: both travel with it."""
    import sys

    return [scaled(v) for v in values], f"Python {sys.version_info[0]}.{sys.version_info[1]}"


def make_adder(offset):  # type: ignore[no-untyped-def]
    def add(x):  # type: ignore[no-untyped-def]
        return x + offset  # a closure over a local variable of make_adder

    return add


def main() -> int:
    with envrunner.Runner(MANIFEST) as runner:
        print("another Python, as source:", runner.call("pool", pipeline, [1, 2, 3]))
        print("a lambda:", runner.call("pool", lambda x: x**2, 12))
        try:
            runner.call("pool", make_adder(10), 1)
        except envrunner.EncodeError as error:
            print("a closure to another Python:", str(error).split(". ")[0] + ".")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
