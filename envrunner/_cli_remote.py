"""``envrunner keys`` and ``envrunner worker``: workers on other machines.

May import: the standard library and the caller-side ``envrunner`` modules below the CLI
(never ``envrunner._cli``, which imports this one).

On the caller's machine::

    envrunner keys keys/ --client gpu1         # broker pair, session key, a pair for gpu1
    # copy keys/broker.key, keys/session.key and keys/gpu1.key_secret to gpu1 (privately)

    runner = envrunner.Runner(listen="tcp://0.0.0.0:5555", keys="keys/", remote_envs=["gpu"])

On the worker's machine (with the same manifest)::

    envrunner worker gpu --connect tcp://caller:5555 --keys keys/ --client gpu1
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any


def add_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    keys = verbs.add_parser(
        "keys",
        help="create the keys for workers on other machines (CurveZMQ and the session key)",
    )
    keys.add_argument("folder", metavar="DIR", type=Path)
    keys.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME",
        help="also create a key pair for a worker machine (repeatable)",
    )
    keys.set_defaults(handler=_keys)

    worker = verbs.add_parser(
        "worker",
        parents=[common],
        help="run a worker of an environment here, for a caller on another machine",
    )
    worker.add_argument("name", metavar="NAME")
    worker.add_argument("--connect", required=True, metavar="ADDRESS", help="tcp://HOST:PORT")
    worker.add_argument(
        "--keys",
        required=True,
        type=Path,
        metavar="DIR",
        help="the keys folder; '-': read them from stdin (launcher: ssh sends them)",
    )
    worker.add_argument("--client", metavar="NAME", help="this machine's key pair in DIR")
    worker.add_argument(
        "--insecure", action="store_true", help="connect without CurveZMQ (the caller must agree)"
    )
    worker.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up (exit 77) when no caller welcomes it within this time (60)",
    )
    worker.add_argument(
        "--id",
        metavar="IDENT",
        help="the identity the caller chose for this worker (set by launcher: slurm and ssh)",
    )
    worker.add_argument(
        "--stdin-watch",
        action="store_true",
        help="stop the worker when stdin closes (set by launcher: ssh: the ssh client is gone)",
    )
    worker.set_defaults(handler=_worker)


def _keys(args: argparse.Namespace) -> int:
    from ._keys import create_keys

    created = create_keys(args.folder, args.client)
    for path in created:
        print(f"created {path}")
    if not created:
        print(f"{args.folder} already holds every key asked for")
    print(
        f"Copy {args.folder / 'broker.key'} and {args.folder / 'session.key'} (privately) to each "
        "worker machine, with that machine's NAME.key_secret."
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from ._environments import resolve
    from ._keys import check_private
    from ._manifest import find_manifest, load_manifest
    from ._prepare import prepare
    from ._process import runtime_root, worker_environ
    from ._progress import auto_progress
    from ._runtime.errors import EnvrunnerError

    received = None
    if str(args.keys) == "-":  # launcher: ssh sends them on stdin, and watches the worker
        args.keys = received = _keys_from_stdin(args.client or "")
        args.stdin_watch = True
    args.keys = args.keys.absolute()  # the worker starts in another folder
    session = args.keys / "session.key"
    check_private(session)
    curve: list[str] = []
    if not args.insecure:
        if not args.client:
            raise EnvrunnerError("envrunner worker needs --client NAME (or --insecure)")
        secret = args.keys / f"{args.client}.key_secret"
        check_private(secret)
        curve = ["--curve-server-key", str(args.keys / "broker.key")]
        curve += ["--curve-client-key", str(secret)]
    manifest = load_manifest(find_manifest(args.manifest))
    spec = manifest[args.name]
    root = runtime_root()
    ready = prepare(spec, resolve(spec), root, auto_progress(), None, manifest.path)
    identity = args.id or f"r-{args.client or 'insecure'}-{socket.gethostname()}-{os.getpid()}"
    argv = [str(ready.python), "-m", "envrunner.worker", "--connect", args.connect]
    argv += ["--id", identity, "--env", spec.name, "--key-file", str(session.absolute())]
    argv += ["--start-timeout", str(args.start_timeout)]
    argv += [*curve, *(arg for path in ready.append_paths for arg in ("--append-path", path))]
    environ = worker_environ(os.environ, ready.bin_dir, ready.virtual_env, ready.environ)
    print(
        f"envrunner: {spec.name}: worker {identity} connecting to {args.connect}", file=sys.stderr
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(root)
    if args.stdin_watch:
        try:
            return _watched(argv, environ)
        finally:
            if received is not None:
                shutil.rmtree(received, ignore_errors=True)
    os.execve(argv[0], argv, environ)


def _keys_from_stdin(client: str) -> Path:
    """The keys a launcher sent as the first line of stdin (JSON: file name -> text), in a new
    private folder (0700, files 0600) that goes when the worker does. Read byte by byte: the
    rest of stdin is the watch on the launcher (its end closes when the launcher is gone)."""
    import json
    import tempfile

    line = b""
    while not line.endswith(b"\n") and len(line) < 65536:
        chunk = os.read(0, 1)
        if not chunk:
            break
        line += chunk
    try:
        files = json.loads(line)
    except ValueError:
        raise SystemExit("envrunner worker --keys -: stdin did not start with the keys") from None
    folder = Path(tempfile.mkdtemp(prefix="envrunner-keys-"))
    for name in ("session.key", "broker.key", f"{client}.key_secret"):
        text = files.get(name) if isinstance(files, dict) else None
        if isinstance(text, str):
            descriptor = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                stream.write(text)
    return folder


def _watched(argv: list[str], environ: dict[str, str]) -> int:
    """Run the worker as a child, and SIGKILL its process group when stdin closes (the ssh
    client that started this is gone): even a worker stuck in native code goes."""
    import signal
    import subprocess
    import threading

    child = subprocess.Popen(argv, env=environ, stdin=subprocess.DEVNULL, start_new_session=True)

    def watch() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except OSError:
            pass

    threading.Thread(target=watch, name="envrunner-stdin-watch", daemon=True).start()
    returncode = child.wait()
    return returncode if returncode >= 0 else 128 - returncode
