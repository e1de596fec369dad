"""What a Slurm job of ``launcher: slurm`` runs: submitit unpickles :func:`become` in the job,
which turns the job's process into ``envrunner worker`` (no Python of submitit's left behind).

May import: the standard library.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

__all__ = ["become"]


def become(argv: Sequence[str], cwd: str) -> None:
    """Replace this process with ``argv`` (run in ``cwd``).

    SIGUSR2 is ignored from here on: submitit asks Slurm for it 90 s before the time limit (to
    checkpoint); a worker lets the limit come, and the job ends as Slurm's TIMEOUT.
    """
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    os.chdir(cwd)
    os.execv(argv[0], list(argv))
