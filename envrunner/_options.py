"""The options a call carries, as one typed record.

May import: the standard library.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = ["SAME", "Options", "Same"]


class Same(enum.Enum):
    """The default of ``Task.options`` for an option whose None means something."""

    SAME = "as before"

    def __repr__(self) -> str:
        return "<as before>"


SAME: Literal[Same.SAME] = Same.SAME


@dataclass(frozen=True)
class Options:
    """How a task's calls run.

    Attributes:
        env: The environment's name in the manifest (None: the manifest's only one).
        timeout: Seconds a call may run (None: the environment's ``timeout:``, else none).
        keep: Keep each result in the worker and return a ``Ref`` to it.
        retries: Runs again after a worker died under the call.
        cache: Store the result on disk and return it for the same call later
            (``docs/caching.md``).
        cache_errors: With ``cache``, store an exception the task raised too.
        merge: Merge identical calls (same function, arguments and environment) submitted
            while one is pending: one runs, every future gets its result (None: as ``cache``).
    """

    env: str | None = None
    timeout: float | None = None
    keep: bool = False
    retries: int = 0
    cache: bool = False
    cache_errors: bool = False
    merge: bool | None = None

    @property
    def merges(self) -> bool:
        """Whether its identical pending calls merge (``docs/workflows.md``)."""
        return self.cache if self.merge is None else self.merge

    def __post_init__(self) -> None:
        if self.keep and self.cache:
            raise ValueError(
                "keep=True and cache=True do not go together: a kept result stays in its "
                "worker and cannot be stored; drop one (task.options(cache=False) for a call "
                "that keeps its result)"
            )

    def but(self, **changes: Any) -> Options:
        """These options with some changed; a change given as ``SAME`` (or None where None
        cannot mean anything) keeps the option as it is."""
        kept = {k: v for k, v in changes.items() if v is not SAME}
        for name in ("env", "keep", "retries", "cache", "cache_errors", "merge"):
            if kept.get(name, 0) is None:
                del kept[name]
        return replace(self, **kept)
