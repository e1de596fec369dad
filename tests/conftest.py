"""Shared fixtures: one envrunner home per test session, environments built there once.

The session's environments (built with uv, from a manifest written here):

    same    the caller's Python (3.11), six==1.16.0, numpy>=2, workers: 2
    other   Python 3.9, six==1.15.0, numpy<2: conflicts with `same` on both packages
    modern  Python 3.12, numpy>=2
    bare    Python 3.13, nothing but the worker runtime (no numpy)

Tests that behave the same in both take the parametrized ``env`` fixture, whose ids read
``same-python`` and ``other-python``.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import WriteManifest

import envrunner

CALLER_MINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"
OTHER_MINOR = "3.9" if CALLER_MINOR != "3.9" else "3.12"

MANIFEST = f"""\
version: 1
environments:
  same:
    python: "{CALLER_MINOR}"
    requirements: ["six==1.16.0", "numpy>=2"]
    workers: 2
    env:
      ENVRUNNER_TEST_FLAG: "from-manifest"
  other:
    python: "{OTHER_MINOR}"
    requirements: ["six==1.15.0", "numpy<2"]
  modern:
    python: "3.12"
    requirements: ["numpy>=2"]
  bare:
    python: "3.13"
"""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_python(version): skip unless that Python exists")


@pytest.fixture(scope="session", autouse=True)
def envrunner_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test of the session builds into one private home (and so builds each env once)."""
    home = tmp_path_factory.mktemp("envrunner-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENVRUNNER_HOME", str(home))
        patch.delenv("ENVRUNNER_MANIFEST", raising=False)
        yield home


@pytest.fixture(scope="session")
def manifest_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("project")
    path = folder / "environments.yaml"
    path.write_text(MANIFEST)
    return path


@pytest.fixture(scope="session")
def runner(manifest_path: Path, envrunner_home: Path) -> Iterator[envrunner.Runner]:
    """A runner shared by the session, active so that tasks use it."""
    with envrunner.Runner(manifest_path, progress=False) as shared:
        yield shared


@pytest.fixture(params=["same", "other"], ids=["same-python", "other-python"])
def env(request: pytest.FixtureRequest) -> str:
    """The name of an environment on the caller's Python, then of one on another Python."""
    return str(request.param)


@pytest.fixture
def write_manifest(tmp_path: Path) -> WriteManifest:
    """Write a manifest (dedented) into a fresh folder; returns its path."""

    def write(text: str, name: str = "environments.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def python_available(version: str) -> bool:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = any(root.glob(f"{version}.*/bin/python3"))
    return found or shutil.which(f"python{version}") is not None
