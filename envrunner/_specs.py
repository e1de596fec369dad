"""The manifest's frozen records: what a loaded manifest is, with no reading in it.

``Manifest`` holds one ``EnvSpec`` per environment; each spec carries its ``PipOptions``, its
``SmokeCheck`` list and the ``Location`` (file:line) of every key, for later errors.
``_manifest.load_manifest`` builds them from YAML; everything else only reads them.

May import: the standard library, ``envrunner._launchspec``, ``envrunner._runtime.errors``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from ._launchspec import LaunchSpec
from ._runtime.errors import UnknownEnvironmentError

Installer = Literal["auto", "uv", "pip"]


@dataclass(frozen=True)
class Location:
    """Where a value was written: ``file:line`` (1-based line)."""

    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class PipOptions:
    """Installer options that change what gets installed."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    pre: bool = False


@dataclass(frozen=True)
class SmokeCheck:
    """One smoke check: a Python snippet (``code``) or a shell command (``run``)."""

    location: Location
    code: str | None = None
    run: str | None = None
    exit_code: int = 0


def _empty_mapping() -> Mapping[str, str]:
    return MappingProxyType({})


def _empty_locations() -> Mapping[str, Location]:
    return MappingProxyType({})


@dataclass(frozen=True)
class EnvSpec:
    """One environment as the manifest declares it, with defaults merged in.

    Attributes:
        name: The environment's name (safe to use in paths and log prefixes).
        python: ``python:`` as written: a version (``"3.12"``) or a path.
        python_path: The interpreter or virtualenv path when ``python`` names one, made
            absolute against the manifest's folder; None for a version.
        requirements: Requirement strings from a list (empty when a file is used).
        requirements_file: The requirements file, absolute, when ``requirements`` names one.
        requirement_files: That file and every file it pulls in with ``-r``/``-c``, in order:
            their contents are part of the build key.
        env: Variables set in the worker (values as written, as strings).
        workers: Most calls at once in this environment (>= 1).
        pip: Installer options that change the result.
        system_site_packages: Whether the environment sees its interpreter's site-packages.
        installer: ``"auto"`` (uv when installed, else virtualenv + pip), ``"uv"`` or ``"pip"``.
        smoke: Smoke checks, in order.
        timeout: Default deadline in seconds for one call, or None.
        idle_timeout: Seconds an idle worker lives before it exits, or None for the runner's.
        max_calls: Calls a worker serves before it is replaced by a fresh one, or None.
        build_timeout: Seconds a whole build may take before it is stopped, or None.
        lock: The lock file ``lock:`` names (a ``pylock.toml`` or a requirements file with
            hashes), absolute; None for the default beside the manifest.
        launch: Where its workers run (``launcher``, ``slurm``, ``hosts``; docs/cluster.md).
        location: Where the environment's name was written.
        locations: Where each of its keys was written (for later errors).
    """

    name: str
    location: Location
    python: str
    python_path: Path | None = None
    requirements: tuple[str, ...] = ()
    requirements_file: Path | None = None
    requirement_files: tuple[Path, ...] = ()
    env: Mapping[str, str] = field(default_factory=_empty_mapping)
    workers: int = 1
    pip: PipOptions = field(default_factory=PipOptions)
    system_site_packages: bool = False
    installer: Installer = "auto"
    smoke: tuple[SmokeCheck, ...] = ()
    timeout: float | None = None
    idle_timeout: float | None = None
    max_calls: int | None = None
    build_timeout: float | None = None
    lock: Path | None = None
    locations: Mapping[str, Location] = field(default_factory=_empty_locations)
    launch: LaunchSpec = field(default_factory=LaunchSpec)

    @property
    def external(self) -> bool:
        """True when the environment is an existing interpreter used as it is, with no build."""
        return (
            self.python_path is not None
            and not self.requirements
            and self.requirements_file is None
            and self.lock is None
        )

    def where(self, key: str) -> Location:
        """Where ``key`` was written, or the environment's own location."""
        return self.locations.get(key, self.location)


@dataclass(frozen=True)
class Manifest:
    """A loaded, valid manifest."""

    path: Path
    version: int
    environments: Mapping[str, EnvSpec]
    records: bool | Path = False  # its ``records:``, a path made absolute

    def __getitem__(self, name: str) -> EnvSpec:
        try:
            return self.environments[name]
        except KeyError:
            raise UnknownEnvironmentError(name, str(self.path), list(self.environments)) from None

    def __contains__(self, name: object) -> bool:
        return name in self.environments

    def __iter__(self) -> Iterator[EnvSpec]:
        return iter(self.environments.values())

    def __len__(self) -> int:
        return len(self.environments)

    def __repr__(self) -> str:
        return f"<Manifest {str(self.path)!r} environments={list(self.environments)}>"
