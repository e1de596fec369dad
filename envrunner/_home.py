"""Where envrunner keeps what outlives a process: built environments, logs, caches.

May import: the standard library, platformdirs.

Layout under ``ENVRUNNER_HOME`` (default: the user cache folder, ``~/.cache/envrunner``)::

    envs/<key>/                 a built environment; envrunner.json inside marks it complete
    envs/<key>.lock             the file lock its builders take
    logs/                       logs of failed builds, kept for reading
    runtime/<hash>/envrunner/   the sealed worker runtime, as workers import it
    overlays/<key>/             runtime packages for interpreters used as they are
    interpreters.json           what each interpreter said about itself, by file identity
    results/                    the result cache ($ENVRUNNER_CACHE moves it; docs/caching.md)
    runs.sqlite                 the call records ($ENVRUNNER_RECORDS moves it)
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The envrunner home folder: ``$ENVRUNNER_HOME`` or the user cache folder."""
    configured = os.environ.get("ENVRUNNER_HOME")
    if configured:
        return Path(configured).expanduser().absolute()
    import platformdirs

    return Path(platformdirs.user_cache_dir("envrunner", appauthor=False))


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
