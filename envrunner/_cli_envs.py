"""The environment verbs: ``envrunner build``, ``list``, ``info``, ``exec``, ``path``,
``smoke`` and ``gc``.

May import: the standard library, ``envrunner._runtime.errors``, ``envrunner._cli_lock``,
``envrunner._environments``, ``envrunner._gc``, ``envrunner._manifest``,
``envrunner._process``, ``envrunner._progress``, ``envrunner._smoke``.

::

    envrunner build [NAME ...] [--force]  ──► resolve ──► build each (progress on stderr)
    envrunner list / info NAME [--json]   ──► resolve ──► state, key, path, build record
    envrunner exec NAME -- COMMAND        ──► build if needed ──► execve in its environment
    envrunner path NAME                   ──► its folder (exit 1 while not built)
    envrunner smoke [NAME ...]            ──► _smoke.smoke (workers, checks, report)
    envrunner gc [--also PATH] [--delete] ──► _gc.garbage ──► remove what no manifest asks for
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._runtime.errors import BuildError, InterpreterNotFoundError

__all__ = ["add_verbs"]

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    """Add the environment verbs to the ``envrunner`` parser's ``verbs``."""
    build = verbs.add_parser("build", parents=[common], help="build environments (all by default)")
    build.add_argument("names", nargs="*", metavar="NAME")
    build.add_argument("--force", action="store_true", help="rebuild even when built")
    build.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    build.set_defaults(handler=_build)

    listing = verbs.add_parser("list", parents=[common], help="list environments and their state")
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    listing.set_defaults(handler=_list)

    info = verbs.add_parser("info", parents=[common], help="show an environment in full")
    info.add_argument("name", metavar="NAME")
    info.add_argument("--json", action="store_true", help="print JSON for scripts")
    info.set_defaults(handler=_info)

    execute = verbs.add_parser(
        "exec",
        parents=[common],
        help="run a command inside an environment (builds it if needed)",
        usage="envrunner exec [--manifest PATH] NAME [--manifest PATH] -- COMMAND [ARG ...]",
    )
    execute.add_argument("name", metavar="NAME")
    execute.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND")
    execute.set_defaults(handler=_exec)

    path = verbs.add_parser("path", parents=[common], help="print an environment's folder")
    path.add_argument("name", metavar="NAME")
    path.set_defaults(handler=_path)

    smoke = verbs.add_parser(
        "smoke",
        parents=[common],
        help="build environments, start a worker in each and run their smoke checks",
    )
    smoke.add_argument("names", nargs="*", metavar="NAME", help="environments (all by default)")
    smoke.add_argument(
        "--jobs", "-j", type=_positive, default=2, metavar="N", help="environments at once (2)"
    )
    smoke.add_argument("--junit-xml", metavar="FILE", help="write a JUnit XML report there")
    smoke.add_argument("--json", action="store_true", help="print JSON for scripts")
    smoke.set_defaults(handler=_smoke)

    gc = verbs.add_parser(
        "gc",
        parents=[common],
        help="remove built environments no manifest shown asks for (a dry run unless --delete)",
    )
    gc.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="PATH",
        help="another manifest whose environments to keep (repeatable)",
    )
    gc.add_argument("--delete", action="store_true", help="really remove them")
    gc.add_argument(
        "--log-days",
        type=float,
        default=14.0,
        metavar="DAYS",
        help="build logs older than this are removed too (14)",
    )
    gc.set_defaults(handler=_gc)


def _manifest(args: argparse.Namespace) -> Any:
    from ._manifest import find_manifest, load_manifest

    return load_manifest(find_manifest(args.manifest))


def _specs(manifest: Any, names: Sequence[str]) -> list[Any]:
    if not names:
        return list(manifest)
    return [manifest[name] for name in names]


# --------------------------------------------------------------------------- build


def _build(args: argparse.Namespace) -> int:
    from ._environments import build, resolve, state
    from ._progress import auto_progress

    manifest = _manifest(args)
    specs = _specs(manifest, args.names)
    progress = auto_progress(False if args.quiet else None)
    failures: list[str] = []
    bad_input = False
    for spec in specs:
        try:
            resolved = resolve(spec)
            if resolved.key is None:
                print(f"{spec.name}: uses {resolved.interpreter.path} as it is (nothing to build)")
                continue
            before = state(resolved)
            record = build(
                resolved, force=args.force, progress=progress, manifest_path=manifest.path
            )
            if before == "built" and not args.force:
                print(f"{spec.name}: already built at {resolved.path}")
            elif args.quiet:
                print(f"{spec.name}: built in {record['build_seconds']:.1f}s at {resolved.path}")
        except (BuildError, InterpreterNotFoundError) as exc:
            failures.append(spec.name)
            bad_input = bad_input or isinstance(exc, InterpreterNotFoundError)
            print(f"envrunner: {exc}", file=sys.stderr)
    if failures:
        print(
            f"envrunner: {len(failures)} of {len(specs)} environments failed to build: "
            + ", ".join(failures),
            file=sys.stderr,
        )
        return EXIT_USAGE if bad_input else EXIT_FAILED
    return 0


# --------------------------------------------------------------------------- list / info


def _describe(spec: Any, manifest_path: Path) -> dict[str, Any]:
    from ._environments import read_record, resolve, state

    row: dict[str, Any] = {
        "name": spec.name,
        "python": spec.python,
        "workers": spec.workers,
        "location": str(spec.location),
    }
    try:
        resolved = resolve(spec)
    except (InterpreterNotFoundError, BuildError) as exc:
        row.update(state="error", error=str(exc), path=None, key=None, size_bytes=None)
        return row
    record = read_record(resolved.path) if resolved.key else None
    row.update(
        state=state(resolved, manifest_path),
        key=resolved.key,
        path=str(resolved.path),
        interpreter=str(resolved.interpreter.path),
        python_version=".".join(map(str, resolved.interpreter.version)),
        installer=resolved.installer,
        size_bytes=record.get("size_bytes") if record else None,
        lock=None
        if resolved.lock is None
        else {
            "path": str(resolved.lock.path),
            "status": resolved.lock.status,
            "differences": list(resolved.lock.differences),
        },
    )
    return row


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _list(args: argparse.Namespace) -> int:
    manifest = _manifest(args)
    rows = [_describe(spec, manifest.path) for spec in manifest]
    if args.json:
        print(json.dumps({"manifest": str(manifest.path), "environments": rows}, indent=2))
        return 0
    table = [("NAME", "PYTHON", "STATE", "SIZE", "PATH")]
    for row in rows:
        python = row.get("python_version") or row["python"]
        table.append(
            (row["name"], python, row["state"], _size(row["size_bytes"]), row["path"] or "-")
        )
    widths = [max(len(str(line[i])) for line in table) for i in range(5)]
    for line in table:
        cells = (str(cell).ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
    for row in rows:
        if row["state"] == "error":
            print(f"\n{row['name']}: {row['error']}", file=sys.stderr)
    return 0


def _info(args: argparse.Namespace) -> int:
    from ._environments import read_record

    manifest = _manifest(args)
    spec = manifest[args.name]
    row = _describe(spec, manifest.path)
    record = read_record(Path(row["path"])) if row.get("key") else None
    info: dict[str, Any] = {
        **row,
        "manifest": str(manifest.path),
        "spec": {
            "python": spec.python,
            "requirements": list(spec.requirements),
            "requirements_file": str(spec.requirements_file) if spec.requirements_file else None,
            "workers": spec.workers,
            "env": sorted(spec.env),  # names only: values may be secrets
            "system_site_packages": spec.system_site_packages,
            "installer": spec.installer,
            "timeout": spec.timeout,
            "smoke": len(spec.smoke),
        },
        "packages": record.get("packages", []) if record else [],
        "built_at": record.get("built_at") if record else None,
        "build_seconds": record.get("build_seconds") if record else None,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{spec.name}  ({spec.location})")
    print(f"  state        {info['state']}")
    if info["state"] == "error":
        print(f"  error        {info['error']}")
        return 0
    print(f"  python       {info['python_version']} ({info['interpreter']})")
    print(f"  installer    {info['installer']}")
    print(f"  key          {info['key'] or '-'}")
    print(f"  path         {info['path']}")
    if info.get("lock"):
        lock = info["lock"]
        changed = "; ".join(lock["differences"])
        print(
            f"  lock         {lock['path']} ({lock['status']}{': ' + changed if changed else ''})"
        )
    requirements = list(spec.requirements) or (
        [f"-r {spec.requirements_file}"] if spec.requirements_file else []
    )
    print(f"  requires     {', '.join(requirements) or '(nothing)'}")
    print(f"  workers      {spec.workers}")
    if spec.env:
        print(f"  env          {', '.join(sorted(spec.env))} (values not shown)")
    if record:
        print(
            f"  built        {info['built_at']} in {info['build_seconds']:.1f}s, "
            f"{_size(info['size_bytes'])}"
        )
        print("  packages")
        for package in info["packages"]:
            role = "" if package["role"] == "dependency" else f"  ({package['role']})"
            print(f"    {package['name']}=={package['version']}{role}")
    return 0


# --------------------------------------------------------------------------- exec / path


def _exec(args: argparse.Namespace) -> int:
    from ._cli_lock import own_installer
    from ._environments import build, resolve
    from ._process import worker_environ
    from ._progress import auto_progress

    command, problem = _exec_command(args)
    if problem:
        print(f"envrunner exec: {problem}", file=sys.stderr)
        return EXIT_USAGE
    manifest = _manifest(args)
    spec = manifest[args.name]
    resolved = resolve(spec)
    if resolved.key is not None:
        build(resolved, progress=auto_progress(), manifest_path=manifest.path)
    interpreter = resolved.interpreter
    virtual_env = (
        resolved.path
        if resolved.key
        else (Path(interpreter.prefix) if interpreter.is_venv else None)
    )
    environ = worker_environ(os.environ, resolved.bin_dir, virtual_env, spec.env)
    try:
        command = own_installer(resolved, command, environ)
    except LookupError as exc:
        print(f"envrunner exec: {exc}", file=sys.stderr)
        return 127
    executable = shutil.which(command[0], path=environ.get("PATH"))
    if executable is None:
        print(f"envrunner exec: command not found: {command[0]}", file=sys.stderr)
        return 127
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(executable, command, environ)


def _exec_command(args: argparse.Namespace) -> tuple[list[str], str]:
    """The command of ``exec NAME [--manifest PATH] -- COMMAND ...``, and a usage problem.

    Options between NAME and ``--`` are exec's own (``--manifest``/``-m``); with no ``--``,
    everything after NAME is the command.
    """
    words = list(args.cmd)
    example = "e.g. envrunner exec NAME -- python -V"
    if "--" not in words:
        if words and words[0].startswith("-"):
            return [], (
                f"{words[0]} after NAME: put exec's options before NAME or before --, and the "
                f"command after --, {example}"
            )
    else:
        split = words.index("--")
        options, words = words[:split], words[split + 1 :]
        while options:
            if options[0] in ("--manifest", "-m") and len(options) > 1:
                if args.manifest is not None and args.manifest != options[1]:
                    return [], f"--manifest given twice ({args.manifest}, {options[1]})"
                args.manifest = options[1]
                options = options[2:]
            elif options[0].startswith("--manifest="):
                args.manifest = options[0].partition("=")[2]
                options = options[1:]
            else:
                return [], (
                    f"unexpected {' '.join(options)} between NAME and --: exec takes only "
                    f"--manifest PATH there; the command goes after --, {example}"
                )
    if not words:
        return [], f"give a command after --, {example}"
    return words, ""


def _path(args: argparse.Namespace) -> int:
    from ._environments import resolve, state

    manifest = _manifest(args)
    resolved = resolve(manifest[args.name])
    print(resolved.path)
    if state(resolved) not in ("built", "external"):
        print(
            f"envrunner: {args.name} is not built yet: run envrunner build {args.name}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


# --------------------------------------------------------------------------- smoke


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _smoke(args: argparse.Namespace) -> int:
    from ._smoke import smoke

    return smoke(
        _manifest(args), args.names, jobs=args.jobs, junit_xml=args.junit_xml, as_json=args.json
    )


# --------------------------------------------------------------------------- gc


def _gc(args: argparse.Namespace) -> int:
    from ._gc import garbage, remove
    from ._manifest import load_manifest

    manifests = [_manifest(args)] + [load_manifest(path) for path in args.also]
    doomed = garbage(manifests, args.log_days)
    if not doomed:
        print("nothing to remove")
        return 0
    for item in doomed:
        verb = "removing" if args.delete else "would remove"
        print(f"{verb} {item.path}  ({item.reason}, {_size(item.bytes)})")
        if args.delete:
            remove(item)
    total = _size(sum(item.bytes for item in doomed))
    if args.delete:
        print(f"freed {total}")
    else:
        print(
            f"{len(doomed)} to remove, {total}; nothing was removed. Run envrunner gc --delete to "
            "remove them (name every manifest whose environments to keep with --manifest "
            "and --also)."
        )
    return 0
