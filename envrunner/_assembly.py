"""A runner's broker put together: its pools from the manifest, the doors for other machines.

:func:`make_broker` reads the manifest once to give each environment's pool its config
(workers, idle timeout, ``max_calls``, whether its workers run here, how many calls are sent
ahead), sets up what environments whose workers run elsewhere need (``launcher: slurm | ssh``:
a tcp door and keys, ``_cluster.py``), and starts the broker's thread. :func:`check_listen`
refuses an unsafe way to accept workers from other machines before anything is started.

May import: the standard library, ``envrunner._actions``, ``_broker``, ``_calls``,
``_cluster``, ``_keys``, ``_manifest``, ``_process``, ``_rundir``, ``_scheduler``, ``_runtime``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ._runtime.errors import EnvrunnerError

if TYPE_CHECKING:
    from ._broker import Broker
    from ._calls import Prepared
    from ._manifest import Manifest
    from ._runtime.shm import Arena, Mapper

__all__ = ["check_listen", "make_broker"]


def check_listen(listen: str, keys: Path | None, insecure: bool) -> bytes:
    """Refuse an unsafe way to accept remote workers; return the session key."""
    import warnings

    from ._keys import read_session_key

    if keys is None:
        raise EnvrunnerError(
            f"Runner(listen={listen!r}) needs keys=DIR: create them with envrunner keys DIR "
            "--client NAME, and copy broker.key, session.key and NAME.key_secret to the "
            "worker's machine"
        )
    if not (keys / "broker.key_secret").exists() and not insecure:
        raise EnvrunnerError(
            f"refusing to listen on {listen} without CurveZMQ keys: {keys} has no "
            "broker.key_secret (run envrunner keys on it), or pass insecure=True to accept "
            "unencrypted, unauthenticated connections"
        )
    if insecure:
        warnings.warn(
            f"envrunner listens on {listen} without CurveZMQ: traffic is readable and anyone "
            "holding the session key can connect",
            RuntimeWarning,
            stacklevel=4,
        )
    return read_session_key(keys / "session.key")


def make_broker(
    manifest: Manifest,
    *,
    remote_envs: frozenset[str],
    idle_timeout: float | None,
    start_timeout: float,
    heartbeat_timeout: float | None,
    prepare: Callable[[str, threading.Event], Prepared],
    runtime_root: Callable[[], Path],
    arena: Arena | None,
    mapper: Mapper,
    shm_threshold: int,
    max_message: int,
    session_key: bytes | None,
    listen: str | None,
    keys: Path | None,
    insecure: bool,
) -> tuple[Broker, Path]:
    """A started broker for ``manifest``'s environments, and its private run folder."""
    from ._actions import PoolConfig
    from ._broker import Broker
    from ._cluster import cluster_setup
    from ._process import caller_project_paths
    from ._rundir import make_rundir
    from ._runtime.shm import remove_stale
    from ._scheduler import Scheduler

    runtime_root()
    rundir = make_rundir()
    # Environments whose workers run elsewhere (launcher: slurm | ssh) get a tcp door and keys.
    run, launchers = cluster_setup(manifest, manifest.path, listen, keys)
    pools = {
        spec.name: PoolConfig(
            workers=spec.workers,
            idle_timeout=spec.idle_timeout if spec.idle_timeout is not None else idle_timeout,
            max_calls=spec.max_calls,
            local=spec.name not in remote_envs,
            direct=spec.launch.local,
            window=PoolConfig.window_for(spec.workers),
        )
        for spec in manifest
    }
    remove_stale()
    scheduler = Scheduler(pools, start_timeout=start_timeout, heartbeat_timeout=heartbeat_timeout)
    broker = Broker(
        scheduler,
        prepare,
        runtime_root,
        caller_project_paths(),
        rundir=rundir,
        arena=arena,
        mapper=mapper,
        shm_threshold=shm_threshold,
        max_message=max_message,
        key=run.session_key if run is not None else session_key,
        listen=run.listen if run is not None else listen,
        keys=run.keys if run is not None else None if insecure else keys,
        launchers=launchers,
    )
    broker.start()
    return broker, rundir
