"""The ``envrunner`` command: the parser, the global options and the exit codes.

The verbs live beside it: build, list, info, exec, path, smoke and gc in ``_cli_envs``; lock
in ``_cli_lock``; keys and worker in ``_cli_remote``; cache and runs in ``_cli_results``;
run (saved calls) in ``_cli_run``;
schema here.

May import: the standard library and the caller-side ``envrunner`` modules.

Exit codes: 0 success; 1 a build (or another operation) failed; 2 bad input (usage, manifest,
unknown environment, no matching interpreter); ``exec`` passes its command's code through.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from ._runtime.errors import (
    BuildError,
    EnvrunnerError,
    InterpreterNotFoundError,
    ManifestError,
    UnknownEnvironmentError,
)

EXIT_FAILED = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    problem = _merge_global_options(args)
    if problem:
        parser.error(problem)
    try:
        code: int = args.handler(args)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (envrunner schema | head): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ManifestError, UnknownEnvironmentError, InterpreterNotFoundError) as exc:
        print(f"envrunner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BuildError as exc:
        print(f"envrunner: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except EnvrunnerError as exc:
        print(f"envrunner: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("envrunner: interrupted", file=sys.stderr)
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="envrunner",
        description="Build, inspect and use the Python environments of an envrunner manifest.",
    )
    parser.add_argument("--version", action="version", version=f"envrunner {__version__}")
    # Also before the verb, as with git or docker: envrunner --manifest x.yaml build
    parser.add_argument(
        "--manifest",
        "-m",
        dest="global_manifest",
        metavar="PATH",
        help="the manifest, for every verb that reads one (also accepted after the verb)",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--manifest",
        "-m",
        metavar="PATH",
        help="the manifest (default: $ENVRUNNER_MANIFEST, else environments.yaml here or above)",
    )
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND")

    from . import _cli_results, _cli_run
    from ._cli_envs import add_verbs as add_env_verbs
    from ._cli_lock import add_verbs as add_lock_verbs
    from ._cli_remote import add_verbs as add_remote_verbs

    add_env_verbs(verbs, common)
    add_remote_verbs(verbs, common)
    add_lock_verbs(verbs, common)
    _cli_results.add_verbs(verbs, common)
    _cli_run.add_verbs(verbs, common)

    schema = verbs.add_parser(
        "schema", help="print the manifest's JSON Schema (for editors: see docs/manifest.md)"
    )
    schema.set_defaults(handler=_schema)
    return parser


def _merge_global_options(args: argparse.Namespace) -> str:
    """Apply ``--manifest`` given before the verb; returns a usage problem, or ``""``."""
    before = args.global_manifest
    if before is None:
        return ""
    if not hasattr(args, "manifest"):
        return f"envrunner {args.command} reads no manifest: drop --manifest {before}"
    if args.manifest is not None and args.manifest != before:
        return (
            f"--manifest given twice ({before} before {args.command}, {args.manifest} after "
            "it): give it once"
        )
    args.manifest = before
    return ""


def _schema(args: argparse.Namespace) -> int:
    from ._schema import manifest_schema

    print(json.dumps(manifest_schema(), indent=2))
    return 0
