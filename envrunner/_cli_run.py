"""``envrunner run FILE... -j N``: run saved calls (``task.save``), each result beside its file.

::

    FILE... ─► read_saved (format) ─► the manifest: -m, else the one it was saved from if it is
               still there, else the one found from here ─► its environment there, its entry
               unchanged (check_entry) ─► Runner.submit(env, run_saved, ...), at most N at once
           ◄── FILE.result (the value, pickled in the worker) + FILE.outcome.json (ok or the
               error, times, keys), written as each call ends; a live view on stderr

Exit status: 0 when every call succeeded, 1 when one failed (its outcome file says why), 2 for
bad usage.

May import: the standard library and the caller-side ``envrunner`` modules.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._runtime import __version__
from ._runtime.errors import EnvrunnerError, RemoteError, RemoteTraceback
from ._saved import SavedCall, check_entry, read_saved

if TYPE_CHECKING:
    from ._manifest import Manifest
    from ._runner import Runner

__all__ = ["add_verbs"]

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    """Register ``run`` on the ``envrunner`` command's sub-parsers."""
    run = verbs.add_parser(
        "run",
        parents=[common],
        help="run saved calls (task.save) and write each result beside its file",
        description="Run calls saved with task.save(FILE, ...). Each FILE gets FILE.result (the "
        "value, a pickle) and FILE.outcome.json (ok or the error). The manifest: --manifest, "
        "else the one the call was saved from if it still exists, else the one found from "
        "here. Exit status 0 when all succeeded, 1 otherwise.",
    )
    run.add_argument("files", nargs="+", metavar="FILE", help="saved calls")
    run.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="run at most N calls at once (default 1); an environment without workers: in the "
        "manifest gets N workers, one with workers: keeps its limit",
    )
    run.add_argument(
        "--allow-changed",
        action="store_true",
        help="run a call even though its environment's manifest entry changed since it was saved",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no live view on stderr")
    run.set_defaults(handler=run_files)


@dataclasses.dataclass
class _Job:
    saved: SavedCall
    runner: Runner
    key: str | None
    started: float = 0.0
    begun: str = ""


def run_files(args: argparse.Namespace) -> int:
    """The ``run`` verb."""
    if args.jobs < 1:
        print(f"envrunner run: -j {args.jobs}: give 1 or more calls at once", file=sys.stderr)
        return EXIT_USAGE
    failed = 0
    runners: dict[Path, Runner] = {}
    jobs: list[_Job] = []
    for name in args.files:
        try:
            jobs.append(_prepare(Path(name), args, runners))
        except EnvrunnerError as exc:
            failed += 1
            _failed(Path(name), None, exc, 0.0, "")
    stopped = True  # Ctrl-C: what runs is stopped, not waited for
    try:
        failed += _run_all(jobs, args.jobs, list(runners.values()), args.quiet)
        stopped = False
    finally:
        for runner in runners.values():
            runner.shutdown(wait=True, cancel_futures=stopped, kill=stopped)
    total = len(args.files)
    print(f"envrunner run: {total - failed} of {total} calls succeeded", file=sys.stderr)
    return EXIT_FAILED if failed else 0


def _prepare(path: Path, args: argparse.Namespace, runners: dict[Path, Runner]) -> _Job:
    """Read a saved call and find where it runs (raises on every reason it cannot)."""
    from ._discovery import find_manifest
    from ._environments import resolve

    saved = read_saved(path)
    if args.manifest is not None:
        where = find_manifest(args.manifest)
    elif Path(saved.manifest).is_file():
        where = Path(saved.manifest)
    else:
        where = find_manifest(None)
    runner = runners.get(where)
    if runner is None:
        from ._manifest import load_manifest
        from ._runner import Runner

        manifest = _widened(load_manifest(where), args.jobs)
        runner = runners[where] = Runner(manifest, progress=False if args.quiet else None)
    if saved.env not in runner.manifest:
        names = ", ".join(runner.manifest.environments) or "none"
        raise EnvrunnerError(
            f"{path}: the call runs in environment {saved.env!r}, which {where} does not declare "
            f"(it has: {names}). Add it to the manifest (saved entry: "
            f"{json.dumps(saved.entry)}), or pass the manifest that has it with -m"
        )
    spec = runner.manifest[saved.env]
    if not args.allow_changed:
        check_entry(saved, spec, where)
    key = resolve(spec).key
    if key != saved.key:
        print(
            f"envrunner run: note: {path}: environment {saved.env!r} has key {key} here, the "
            f"call was saved with {saved.key} (another interpreter build or lock)",
            file=sys.stderr,
        )
    return _Job(saved, runner, key)


def _widened(manifest: Manifest, jobs: int) -> Manifest:
    """Environments that do not set ``workers:`` get ``jobs`` of them."""
    environments = {
        name: spec
        if "workers" in spec.locations or spec.workers >= jobs
        else dataclasses.replace(spec, workers=jobs)
        for name, spec in manifest.environments.items()
    }
    return dataclasses.replace(manifest, environments=environments)


def _run_all(jobs: list[_Job], most: int, runners: list[Runner], quiet: bool) -> int:
    """Run the calls, at most ``most`` at once; returns how many failed."""
    from contextlib import ExitStack

    from ._options import Options
    from ._runtime.replay import run_saved
    from ._tasks import Task

    failed = 0
    waiting = list(reversed(jobs))
    running: dict[Future[Any], _Job] = {}
    with ExitStack() as views:
        if not quiet:
            for runner in runners:
                views.enter_context(runner.live())
        while waiting or running:
            while waiting and len(running) < most:
                job = waiting.pop()
                saved = job.saved
                job.started = time.monotonic()
                job.begun = _now()
                options = Options(env=saved.env, timeout=saved.timeout, retries=saved.retries)
                try:
                    future: Future[Any] = job.runner.submit(
                        saved.env,
                        Task(run_saved, options),
                        saved.code,
                        saved.body,
                        saved.frames,
                        saved.paths,
                        saved.env,
                    )
                except EnvrunnerError as exc:
                    failed += 1
                    _failed(saved.path, job, exc, 0.0, job.begun)
                    continue
                running[future] = job
            ended, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in ended:
                job = running.pop(future)
                if not _finished(job, future):
                    failed += 1
    return failed


def _finished(job: _Job, future: Future[Any]) -> bool:
    """Write a call's result and outcome; returns whether it succeeded."""
    saved = job.saved
    seconds = time.monotonic() - job.started
    try:
        how, data = future.result()
    except BaseException as exc:  # the task's error, or envrunner's around it
        _failed(saved.path, job, exc, seconds, job.begun)
        return False
    _write(saved.result_path, data)
    outcome = _outcome(saved.path, job, seconds, job.begun)
    outcome.update(ok=True, result=saved.result_path.name, result_format=how)
    _write(saved.outcome_path, json.dumps(outcome, indent=2).encode() + b"\n")
    print(f"ok      {saved.path} ({seconds:.1f}s) -> {saved.result_path.name}", flush=True)
    return True


def _failed(path: Path, job: _Job | None, exc: BaseException, seconds: float, begun: str) -> None:
    """Say that a file's call failed, in its outcome file (when the file exists) and here."""
    type_name = (
        exc.type_name
        if isinstance(exc, RemoteError)
        else f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    )
    message = exc.message if isinstance(exc, RemoteError) else str(exc)
    what = f" ({job.saved.task} in {job.saved.env!r})" if job is not None else ""
    print(f"failed  {path}{what}: {type_name}: {message}", flush=True)
    if not path.is_file():
        return
    outcome = _outcome(path, job, seconds, begun)
    outcome.update(
        ok=False,
        error={
            "type": type_name,
            "message": message,
            "traceback": _traceback(exc),
        },
    )
    result = path.with_name(path.name + ".result")
    result.unlink(missing_ok=True)  # an older run's value is not this run's
    _write(path.with_name(path.name + ".outcome.json"), json.dumps(outcome, indent=2).encode())


def _traceback(exc: BaseException) -> str:
    """The worker's traceback when the error came from one, else this process's."""
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        return str(cause)
    return "".join(traceback.format_exception(exc))


def _outcome(path: Path, job: _Job | None, seconds: float, begun: str) -> dict[str, Any]:
    out: dict[str, Any] = {"file": str(path), "envrunner": __version__}
    if job is not None:
        saved = job.saved
        out.update(
            task=saved.task,
            env=saved.env,
            manifest=str(job.runner.manifest.path),
            key_saved=saved.key,
            key_used=job.key,
            saved=saved.created,
        )
    out.update(started=begun or None, seconds=round(seconds, 3))
    return out


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
