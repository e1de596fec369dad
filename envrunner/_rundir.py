"""The runner's private folder for its sockets, and the removal of those of dead runners.

May import: the standard library, ``envrunner._runtime.errors``.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from ._runtime.errors import EnvrunnerError

__all__ = ["make_rundir"]

_PREFIX = "envrunner-"


def make_rundir() -> Path:
    """A private (0700) folder for this runner's sockets; stale ones of dead runners go first.

    It is made in ``$ENVRUNNER_RUNDIR`` or the temporary folder, which must not let other users
    replace what is in it: writable by others only with the sticky bit (as /tmp is).

    Raises:
        EnvrunnerError: The folder is unsafe or unusable, or the new one did not come out
            private.
    """
    base = Path(os.environ.get("ENVRUNNER_RUNDIR") or tempfile.gettempdir())
    info = base.stat()
    open_to_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if open_to_others and not info.st_mode & stat.S_ISVTX:
        raise EnvrunnerError(
            f"refusing to put the runner's sockets in {base}: other users can write there "
            f"(mode {stat.filemode(info.st_mode)}, no sticky bit) and could replace them. Set "
            "ENVRUNNER_RUNDIR (or TMPDIR) to a folder only you can write, or chmod o-w,g-w it"
        )
    _remove_stale(base)
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base))
    except OSError as exc:
        raise EnvrunnerError(
            f"cannot make the runner's socket folder in {base}: {exc.strerror or exc}. Free "
            "space there, or set ENVRUNNER_RUNDIR (or TMPDIR) to a writable folder of your own"
        ) from exc
    os.chmod(path, 0o700)
    made = path.stat()
    if made.st_uid != os.getuid() or made.st_mode & 0o077:
        raise EnvrunnerError(f"{path} is not private to this user; refusing to use it")
    return path


def _remove_stale(base: Path) -> None:
    try:
        entries = list(base.glob(f"{_PREFIX}*-*"))
    except OSError:
        return
    for entry in entries:
        pid_text = entry.name[len(_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue
