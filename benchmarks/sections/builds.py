"""Environment builds: envrunner against the same installer commands run by hand.

One environment on the caller's Python with ``six==1.16.0`` (plus the worker runtime, which
envrunner always installs and the commands by hand install too), built with uv and with
virtualenv + pip:

- cold: empty uv, pip and virtualenv caches of our own (``UV_CACHE_DIR``, ``PIP_CACHE_DIR``,
  ``VIRTUALENV_OVERRIDE_APP_DATA``) and a new ``ENVRUNNER_HOME``, so envrunner also discovers
  interpreters again; the operating system's file cache is left as it is;
- warm: the same caches filled by an earlier build; envrunner rebuilds (``build --force``);
- cache hit: the environment is built and unchanged: ``Runner(manifest).prepare()`` in this
  process, and ``envrunner build`` in a new process.

envrunner runs as ``python -m envrunner build`` (a new process, as a user runs it); by hand is
``uv venv`` + ``uv pip install`` or ``python -m virtualenv`` + ``pip install``, with the flags
envrunner passes.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from harness import Bench, Section, timed_run

import envrunner

NAME = "builds"
TITLE = "4. Environment builds: envrunner against the same tools by hand"

REQUIREMENTS = ["six==1.16.0"]
RUNTIME = ["pyzmq>=25", "msgpack>=1.0", "cloudpickle>=3.0"]


def _uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    return found


def _by_hand(installer: str, python: Path, target: Path) -> list[list[str]]:
    packages = [*REQUIREMENTS, *RUNTIME]
    if installer == "uv":
        uv = _uv()
        venv = ["--python", str(python), "--no-project", "--no-config", "--quiet", str(target)]
        install = ["--python", str(target / "bin" / "python"), "--compile-bytecode", "--no-config"]
        return [[uv, "venv", *venv], [uv, "pip", "install", *install, *packages]]
    venv = ["--python", str(python), "--no-setuptools", "--no-wheel", "--no-periodic-update"]
    install = ["--compile", "--no-input", "--disable-pip-version-check"]
    return [
        [sys.executable, "-m", "virtualenv", *venv, "--quiet", str(target)],
        [str(target / "bin" / "python"), "-m", "pip", "install", *install, *packages],
    ]


class Caches:
    """A set of installer caches (and an envrunner home) under one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def environ(self) -> dict[str, str]:
        environ = dict(os.environ)
        environ["UV_CACHE_DIR"] = str(self.folder / "uv-cache")
        environ["PIP_CACHE_DIR"] = str(self.folder / "pip-cache")
        environ["VIRTUALENV_OVERRIDE_APP_DATA"] = str(self.folder / "virtualenv")
        environ["ENVRUNNER_HOME"] = str(self.folder / "home")
        environ["UV_NO_PROGRESS"] = "1"
        environ["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        return environ


def run(bench: Bench, section: Section) -> None:
    python = bench.pythons[bench.caller_minor]
    folder = bench.tmp / "builds"
    rounds = bench.count(3, 1)
    installers = ["uv"] if bench.quick else ["uv", "pip"]
    if bench.quick:
        section.note("--quick: builds with virtualenv + pip are skipped (seconds each)")
    section.note(
        "cold = empty uv/pip/virtualenv caches and a new ENVRUNNER_HOME (the OS file cache is "
        "not dropped); warm = those caches filled, the environment rebuilt"
    )
    for installer in installers:
        manifest = bench.manifest(
            f"build-{installer}",
            {
                "b": {
                    "python": bench.caller_minor,
                    "requirements": REQUIREMENTS,
                    "installer": installer,
                }
            },
        )
        build = [sys.executable, "-m", "envrunner", "build", "--manifest", str(manifest), "-q"]
        cold_er: list[float] = []
        cold_hand: list[float] = []
        for index in range(rounds):
            caches = Caches(folder / f"{installer}-cold-er-{index}")
            cold_er.append(timed_run(build, env=caches.environ()))
            caches = Caches(folder / f"{installer}-cold-hand-{index}")
            cold_hand.append(_run_by_hand(installer, python, caches))
        warm = Caches(folder / f"{installer}-warm")
        timed_run(build, env=warm.environ())  # fills the caches
        _run_by_hand(installer, python, warm)
        warm_er: list[float] = []
        warm_hand: list[float] = []
        for _ in range(rounds):
            warm_er.append(timed_run([*build, "--force"], env=warm.environ()))
            warm_hand.append(_run_by_hand(installer, python, warm))
        label = "uv" if installer == "uv" else "virtualenv + pip"
        section.add(f"{label}, cold caches", "envrunner build", "s", cold_er)
        section.add(f"{label}, cold caches", "by hand", "s", cold_hand, baseline=True)
        section.add(f"{label}, warm caches", "envrunner build", "s", warm_er)
        section.add(f"{label}, warm caches", "by hand", "s", warm_hand, baseline=True)
        if installer == "uv":
            _cache_hit(bench, section, manifest, warm, build)


def _run_by_hand(installer: str, python: Path, caches: Caches) -> float:
    target = caches.folder / "by-hand-env"
    shutil.rmtree(target, ignore_errors=True)
    return sum(
        timed_run(argv, env=caches.environ()) for argv in _by_hand(installer, python, target)
    )


def _cache_hit(
    bench: Bench, section: Section, manifest: Path, caches: Caches, build: list[str]
) -> None:
    environ = caches.environ()
    saved = os.environ.get("ENVRUNNER_HOME")
    os.environ["ENVRUNNER_HOME"] = environ["ENVRUNNER_HOME"]
    try:
        envrunner.Runner(manifest, progress=False).prepare()  # warm this process's imports
        samples = []
        for _ in range(bench.count(20, 5)):
            begin = time.perf_counter()
            envrunner.Runner(manifest, progress=False).prepare()
            samples.append((time.perf_counter() - begin) * 1000)
    finally:
        if saved is not None:
            os.environ["ENVRUNNER_HOME"] = saved
    section.add(
        "cache hit",
        "envrunner: Runner(manifest).prepare()",
        "ms",
        samples,
        note="in this process: manifest read, interpreter found, build record read",
    )
    cli = [timed_run(build, env=environ) * 1000 for _ in range(bench.count(10, 3))]
    bare = [timed_run([sys.executable, "-c", "pass"]) * 1000 for _ in range(bench.count(10, 3))]
    section.add("cache hit, new process", "python -c pass", "ms", bare, baseline=True)
    section.add(
        "cache hit, new process",
        "envrunner build (nothing to do)",
        "ms",
        cli,
        note="interpreter start and imports included",
    )
