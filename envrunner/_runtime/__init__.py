"""The sealed worker side of envrunner.

Everything under ``envrunner/_runtime`` runs inside user environments on every supported Python
(3.9 and newer) and imports only the standard library, pyzmq, msgpack, cloudpickle and its
siblings. It reaches a worker as a copy on the worker's import path, not as an installed package,
so nothing here may import the caller-side modules of ``envrunner``.
"""

from typing import Optional

__version__ = "0.1.0"

#: What every environment gets installed besides its own requirements: the worker's runtime.
RUNTIME_REQUIREMENTS = ("pyzmq>=25", "msgpack>=1.0", "cloudpickle>=3.0")

#: The distribution names of those packages, to mark them in an environment's record.
RUNTIME_DISTRIBUTIONS = ("pyzmq", "msgpack", "cloudpickle")

#: The environment this process is a worker of; None in the caller. Set by the worker loop.
WORKER_ENV: Optional[str] = None


def current_environment() -> Optional[str]:
    """The environment this code runs in: its name inside a worker, None in the caller."""
    return WORKER_ENV


def value_of(obj: object) -> object:
    """Return ``obj``: run in a worker on a reference, it brings the kept object back."""
    return obj
