"""The launchers of a runner's environments that run elsewhere (``launcher: slurm | ssh``).

::

    Runner._make_broker ─ cluster_setup(manifest) ─► (None, {}) when every environment is local
                                                  ─► (the run: folder, keys, tcp door address,
                                                      session key; {env: its Launcher})

May import: the standard library, ``envrunner._launchers``, ``_process``, ``_slurm``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ._launchers import ClusterRun, SshLauncher, make_run
from ._process import Launcher
from ._slurm import SlurmLauncher

__all__ = ["cluster_setup"]

#: ``launcher:`` of the manifest -> its implementation (``local`` is the broker's own).
LAUNCHERS: dict[str, Callable[[ClusterRun, Any], Launcher]] = {
    "slurm": SlurmLauncher,
    "ssh": SshLauncher,
}


def cluster_setup(
    specs: Iterable[Any], manifest: Path, listen: str | None, keys: Path | None
) -> tuple[ClusterRun | None, dict[str, Launcher]]:
    """Launchers for the environments that run elsewhere, and their run (None: all local)."""
    remote = [spec for spec in specs if not spec.launch.local]
    if not remote:
        return None, {}
    run = make_run(manifest, listen, keys)
    return run, {spec.name: LAUNCHERS[spec.launch.kind](run, spec.launch) for spec in remote}
