"""The words errors add: the closest known name, a requirement the worker runtime brings,
the last lines a process wrote to stderr.

May import: the standard library (and the runtime's package, for ``RUNTIME_REQUIREMENTS``).

This module is part of the sealed worker runtime: standard library only, parses on Python 3.9.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence

__all__ = ["closest", "runtime_clashes", "tail_block"]


def closest(word: str, candidates: Iterable[str]) -> str:
    """The candidate nearest to ``word`` (difflib), or an empty string."""
    import difflib

    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return match[0] if match else ""


def runtime_clashes(tail: Sequence[str]) -> List[str]:
    """Lines naming the worker-runtime requirements an installer's output blames.

    The installer reports ``pyzmq>=25`` as if the user had asked for it ("Because you require
    pyzmq<20 and pyzmq>=25"); the message says where it comes from and what to loosen.
    """
    from . import RUNTIME_REQUIREMENTS

    text = "\n".join(tail)
    lines = []
    for requirement in RUNTIME_REQUIREMENTS:
        if requirement in text:
            name = requirement.split(">")[0]
            lines.append(
                f"{requirement} is not from your requirements: envrunner's worker runtime "
                f"({', '.join(RUNTIME_REQUIREMENTS)}) is installed into every environment with "
                f"them; loosen your {name} requirement to allow {requirement}."
            )
    return lines


def tail_block(stderr_tail: Sequence[str]) -> str:
    if not stderr_tail:
        return "\nthe worker wrote nothing to stderr"
    return "\nlast lines of the worker's stderr:\n" + "\n".join(f"  | {s}" for s in stderr_tail)
