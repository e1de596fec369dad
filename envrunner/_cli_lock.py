"""``envrunner lock``, ``--locked`` for build and smoke, and ``exec NAME -- pip``.

May import: the standard library and ``envrunner._build_steps``, ``_envkey``, ``_locks``,
``_manifest``, ``_progress``, ``_runtime``.

::

    envrunner lock [NAME ...] ──► resolve each environment ──► _locks.write_lock ──► lock files
    build / smoke --locked    ──► ENVRUNNER_LOCKED=1 for this process ──► builds refuse a missing
                                  or stale lock (the Runner that smoke uses reads it too)
    exec NAME -- pip ...      ──► the environment's own pip, or uv pip --python <its python>
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._locks import LOCKED_VARIABLE

__all__ = ["add_verbs", "own_installer"]

_PIP = ("pip", "pip3")


def add_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    """Add ``lock``, and ``--locked`` to ``build`` and ``smoke`` (when they exist)."""
    lock = verbs.add_parser(
        "lock",
        parents=[common],
        help="resolve environments and write their pins with hashes beside the manifest",
    )
    lock.add_argument("names", nargs="*", metavar="NAME", help="environments (all by default)")
    lock.add_argument(
        "--upgrade", "-U", action="store_true", help="take the newest versions allowed"
    )
    lock.add_argument(
        "--upgrade-package",
        "-P",
        action="append",
        default=[],
        metavar="NAME",
        help="take the newest allowed version of this package (repeatable)",
    )
    lock.set_defaults(handler=_lock)
    for name in ("build", "smoke"):
        verb = verbs.choices.get(name)
        if verb is None:
            continue
        verb.add_argument(
            "--locked",
            action="store_true",
            help=f"fail when a lock file is missing or out of date (or {LOCKED_VARIABLE}=1)",
        )
        verb.set_defaults(handler=_locked(verb.get_default("handler")))


def _locked(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if getattr(args, "locked", False):
            os.environ[LOCKED_VARIABLE] = "1"
        return handler(args)

    return run


def _lock(args: argparse.Namespace) -> int:
    from ._envkey import resolve
    from ._locks import write_lock
    from ._manifest import find_manifest, load_manifest
    from ._progress import auto_progress
    from ._runtime.errors import BuildError

    manifest = load_manifest(find_manifest(args.manifest))
    specs = [manifest[name] for name in args.names] if args.names else list(manifest)
    progress = auto_progress()
    failed = []
    for spec in specs:
        resolved = resolve(spec)
        if resolved.key is None:
            print(f"{spec.name}: uses {resolved.interpreter.path} as it is (nothing to lock)")
            continue
        if spec.lock is not None and not (spec.requirements or spec.requirements_file):
            print(f"{spec.name}: builds from {spec.lock} as it is (nothing to lock)")
            continue
        try:
            path, count = write_lock(
                spec,
                resolved.interpreter,
                resolved.installer,
                upgrade=args.upgrade,
                upgrade_packages=tuple(args.upgrade_package),
                progress=progress,
            )
        except BuildError as exc:
            failed.append(spec.name)
            print(f"envrunner: {exc}", file=sys.stderr)
            continue
        progress.done(spec.name, f"locked {count} packages in {path}")
    if failed:
        print(f"envrunner: could not lock {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def own_installer(resolved: Any, command: list[str], environ: dict[str, str]) -> list[str]:
    """``command`` with ``pip`` bound to the environment's own installer, never the host's.

    A pip inside the environment is used as it is; an environment built with uv has none, so
    ``pip SUBCOMMAND ...`` becomes ``uv pip SUBCOMMAND --python <its python> ...``.

    Raises:
        LookupError: The environment has no pip and uv cannot stand in (the message says why).
    """
    if not command or command[0] not in _PIP:
        return command
    bin_dir = Path(resolved.bin_dir)
    own = bin_dir / command[0]
    if own.is_file() and os.access(own, os.X_OK):
        return [str(own), *command[1:]]
    if (bin_dir / "pip").is_file():
        return [str(bin_dir / "pip"), *command[1:]]
    from ._build_steps import find_uv

    uv = find_uv()
    if resolved.installer != "uv" or uv is None:
        raise LookupError(
            f"{resolved.spec.name} has no pip (looked in {bin_dir}); not running the host's pip, "
            f"which would act on another Python. Use: envrunner exec {resolved.spec.name} -- "
            "python -m ensurepip, or uv pip --python " + str(resolved.python)
        )
    rest = command[1:]
    if not rest or rest[0].startswith("-"):
        raise LookupError(
            f"{resolved.spec.name} was built with uv and has no pip: give a pip subcommand "
            f"(install, uninstall, list, freeze, show, check), which runs as uv pip SUBCOMMAND "
            f"--python {resolved.python}"
        )
    environ.pop("UV_SYSTEM_PYTHON", None)
    where = shutil.which(str(uv)) or str(uv)
    return [where, "pip", rest[0], "--python", str(resolved.python), *rest[1:]]
