"""Where envrunner keeps what outlives a process: built environments, logs, caches.

May import: the standard library, platformdirs, ``envrunner._runtime.errors``.

Layout under ``ENVRUNNER_HOME`` (default: the user cache folder, ``~/.cache/envrunner``)::

    envs/<key>/                 a built environment; envrunner.json inside marks it complete
    envs/<key>.lock             the file lock its builders take
    logs/                       logs of failed builds, kept for reading
    runtime/<hash>/envrunner/   the sealed worker runtime, as workers import it
    overlays/<key>/             runtime packages for interpreters used as they are
    interpreters.json           what each interpreter said about itself, by file identity
    results/                    the result cache ($ENVRUNNER_CACHE moves it; docs/caching.md)
    runs.sqlite                 the call records ($ENVRUNNER_RECORDS moves it)

Modes, whatever the umask: the home (when envrunner makes it) and every folder envrunner makes
in it are 0700 (only their owner enters them). Environments hold code that our workers run: a
folder another user could write to would let that user run code in our workers (a ``.pth``
file in ``site-packages`` runs at every start), so a home or folder in it that is not ours, or
that others can write to (without the sticky bit), is refused; nobody else needs to read the
cache. The files inside (made by uv and pip) may follow the umask: the 0700 folders above them
keep everyone else out. Existing folders keep their modes (``$HOME`` may be the home).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ._runtime.errors import EnvrunnerError

__all__ = [
    "cache_dir",
    "cache_limit",
    "envs_dir",
    "home",
    "logs_dir",
    "make_dir",
    "parse_size",
    "records_path",
]

#: Homes already checked (or made) by this process.
_checked: set[Path] = set()


def home() -> Path:
    """The envrunner home folder: ``$ENVRUNNER_HOME`` or the user cache folder.

    It is made (0700) if missing, and checked once per process.

    Raises:
        EnvrunnerError: It is not ours, or others can write to it; or it cannot be made.
    """
    configured = os.environ.get("ENVRUNNER_HOME")
    if configured:
        path = Path(configured).expanduser().absolute()
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("envrunner", appauthor=False))
    if path not in _checked:
        make_dir(path, what="ENVRUNNER_HOME")
        _checked.add(path)
    return path


def make_dir(path: Path, what: str = "") -> Path:
    """Make ``path`` and its missing parents 0700, whatever the umask; returns it.

    An existing folder is left as it is if it is ours and others cannot write to it, or can
    only with the sticky bit (the rule of the runner's socket folder: then nobody else can
    replace what we make in it, and what we make is 0700 and checked to be ours).

    Raises:
        EnvrunnerError: It is not ours, others can write to it, or it cannot be made (the
            message names the folder and the fix).
    """
    what = what or "a folder of envrunner's"
    missing: list[Path] = []
    cursor = path
    while not cursor.exists() and cursor != cursor.parent:
        missing.append(cursor)
        cursor = cursor.parent
    try:
        for folder in reversed(missing):
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:
                pass  # another process made it: it is checked below
            else:
                os.chmod(folder, 0o700)  # the umask may have taken the owner's bits
        info = os.stat(path)
    except OSError as exc:
        raise EnvrunnerError(
            f"cannot make {what} {path}: {exc.strerror or exc}; set ENVRUNNER_HOME to a folder "
            "you can write to"
        ) from exc
    open_to_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (
        info.st_mode & stat.S_ISVTX
    )
    if info.st_uid != os.getuid() or open_to_others:
        owner = "not yours" if info.st_uid != os.getuid() else "others can write to it"
        raise EnvrunnerError(
            f"refusing {what} {path}: {owner} (mode {stat.filemode(info.st_mode)}), and what "
            f"is in it runs in your workers. chmod 700 {path}, or set ENVRUNNER_HOME to a "
            "folder of your own"
        )
    return path


def envs_dir() -> Path:
    """Where built environments live, one folder per content key."""
    return home() / "envs"


def logs_dir() -> Path:
    """Where logs of failed builds are kept."""
    return home() / "logs"


#: The result cache's size limit unless ``$ENVRUNNER_CACHE_SIZE`` says otherwise.
DEFAULT_CACHE_LIMIT = 10 * 1000**3

_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def cache_dir() -> Path:
    """Where cached results live: ``$ENVRUNNER_CACHE`` or ``<home>/results``."""
    configured = os.environ.get("ENVRUNNER_CACHE")
    if configured:
        return Path(configured).expanduser().absolute()
    return home() / "results"


def cache_limit() -> int:
    """The result cache's size limit in bytes: ``$ENVRUNNER_CACHE_SIZE`` (``500MB``, ``20G``).

    Raises:
        ValueError: the variable is set to something that is not a size.
    """
    configured = os.environ.get("ENVRUNNER_CACHE_SIZE", "").strip()
    if not configured:
        return DEFAULT_CACHE_LIMIT
    return parse_size(configured, "ENVRUNNER_CACHE_SIZE")


def parse_size(text: str, where: str) -> int:
    """``"500MB"`` -> 500000000; KiB-style ``"2GiB"`` counts in 1024s."""
    import re

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtKMGT]?)(i?)[bB]?\s*", text)
    if match is None:
        raise ValueError(
            f"{where}={text!r} is not a size: write a number of bytes with an optional unit, "
            "e.g. 500MB, 20GB or 2GiB"
        )
    number, unit, binary = match.groups()
    scale = _UNITS[unit.lower()]
    if binary and unit:
        scale = 1024 ** "kmgt".index(unit.lower()) * 1024
    return int(float(number) * scale)


def records_path() -> Path:
    """The call records' database: ``$ENVRUNNER_RECORDS`` or ``<home>/runs.sqlite``."""
    configured = os.environ.get("ENVRUNNER_RECORDS")
    if configured:
        return Path(configured).expanduser().absolute()
    return home() / "runs.sqlite"
