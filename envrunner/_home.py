"""Where envrunner keeps what outlives a process: built environments, logs, caches.

May import: the standard library, platformdirs.

Layout under ``ENVRUNNER_HOME`` (default: the user cache folder, ``~/.cache/envrunner``)::

    envs/<key>/                 a built environment; envrunner.json inside marks it complete
    envs/<key>.lock             the file lock its builders take
    logs/                       logs of failed builds, kept for reading
    runtime/<hash>/envrunner/   the sealed worker runtime, as workers import it
    overlays/<key>/             runtime packages for interpreters used as they are
    interpreters.json           what each interpreter said about itself, by file identity
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
