"""``envrunner smoke``: prove that every environment still builds and works.

May import: the standard library and the caller-side ``envrunner`` modules (reporting is
``envrunner._smoke_report``; requirements are read by ``envrunner._requirements``).

::

    main thread                    --jobs threads, one environment each        a worker per env
    ───────────                    ────────────────────────────────────        ────────────────
    load the manifest
    one Runner for all ──────────► setup: build or reuse (Runner.prepare),
                                          start a worker ─────────────────────► worker_info()
                                   each check, in manifest order:
                                     snippet  ─► runner call ─────────────────► run_snippet()
                                     {run: }  ─► shell here, with the env's
                                                 PATH and variables
                                     default  ─► runner call ───────► import_distributions()
    print each row as it lands ◄── Row
    failures, summary, --junit-xml, --json; exit 0 only when all passed

An environment whose setup fails (no interpreter, a failed build, a worker that does not start)
is one ``error`` row quoting the installer's last lines; its checks are reported as skipped and
the other environments still run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ._manifest import EnvSpec, Manifest, SmokeCheck
from ._requirements import named
from ._runtime.errors import EnvrunnerError
from ._smoke_report import (
    ERROR,
    FAILED,
    OUTPUT_LINES,
    PASSED,
    SKIPPED,
    Report,
    Row,
    Table,
    write_junit,
)
from ._smoke_report import (
    as_json as json_report,
)

__all__ = ["CHECK_TIMEOUT", "Row", "requirement_names", "smoke"]

#: Seconds one check may take when the environment sets no ``timeout:``.
CHECK_TIMEOUT = 600.0


def smoke(
    manifest: Manifest,
    names: Sequence[str] = (),
    *,
    jobs: int = 2,
    junit_xml: str | os.PathLike[str] | None = None,
    as_json: bool = False,
    stream: TextIO | None = None,
) -> int:
    """Build, start and check environments; print a table as results come in.

    Args:
        manifest: The loaded manifest.
        names: Environments to check (all by default).
        jobs: Environments checked at once.
        junit_xml: Write a JUnit XML report there (a test case per check).
        as_json: Print a JSON document on stdout (the table goes to stderr).
        stream: Where the table goes (default: stdout, or stderr with ``as_json``).

    Returns:
        0 when every check passed, else 1.

    Raises:
        UnknownEnvironmentError: A name is not in the manifest (nothing is run).
    """
    from ._runner import Runner

    specs = [manifest[name] for name in names] if names else list(manifest)
    out = stream or (sys.stderr if as_json else sys.stdout)
    table = Table(out, max((len(spec.name) for spec in specs), default=0))
    started = time.monotonic()
    runner = Runner(manifest, progress=False)
    shells = _Shells()
    pool = ThreadPoolExecutor(max(1, jobs), thread_name_prefix="envrunner-smoke")
    try:
        futures = [
            pool.submit(_check_environment, runner, shells, spec, table.add) for spec in specs
        ]
        reports = [future.result() for future in futures]
    except BaseException:  # Ctrl-C: stop what runs now instead of waiting for it
        table.stopped = True
        pool.shutdown(wait=False, cancel_futures=True)
        shells.stop()
        runner.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    runner.shutdown(wait=True)
    seconds = time.monotonic() - started
    table.summary(reports, seconds)
    if junit_xml is not None:
        write_junit(reports, Path(junit_xml), manifest.path, seconds)
    if as_json:
        print(json.dumps(json_report(reports, manifest.path, seconds), indent=2))
    return 0 if all(report.outcome == PASSED for report in reports) else 1


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class _Planned:
    """A check to run: a manifest ``smoke`` entry, or the default import of a requirement."""

    label: str
    kind: str
    location: str = ""
    check: SmokeCheck | None = None
    distribution: str = ""


def _check_environment(
    runner: Any, shells: _Shells, spec: EnvSpec, emit: Callable[[Row], None]
) -> Report:
    """Set up one environment and run its checks; never raises for what it checks."""
    report = Report(spec.name, spec.python)

    def add(row: Row) -> None:
        report.rows.append(row)
        emit(row)

    planned = _plan(spec)
    started = time.monotonic()
    try:
        resolved, note = _setup(runner, spec)
    except Exception as exc:
        add(_failure_row(spec.name, "setup", "setup", ERROR, time.monotonic() - started, exc))
        note = "not run: the environment's setup failed"
        for check in planned:
            add(
                Row(spec.name, check.label, check.kind, SKIPPED, 0.0, note, location=check.location)
            )
        return report
    report.python = ".".join(map(str, resolved.interpreter.version))
    add(Row(spec.name, "setup", "setup", PASSED, time.monotonic() - started, note))
    imports = [check for check in planned if check.kind == "import"]
    if imports:
        for row in _run_imports(runner, spec, imports):
            add(row)
    for check in planned:
        if check.kind == "python":
            add(_run_snippet(runner, spec, check))
        elif check.kind == "shell":
            add(_run_shell(shells, spec, resolved, check))
    return report


def _setup(runner: Any, spec: EnvSpec) -> tuple[Any, str]:
    """Build (or reuse) the environment and start a worker; returns it and how it went."""
    from ._environments import resolve, state
    from ._runtime.smoke import worker_info

    resolved = resolve(spec)
    before = state(resolved)
    clock = time.monotonic()
    runner.prepare(spec.name)
    built = time.monotonic() - clock
    info = runner.call(spec.name, worker_info)
    how = {"built": "reused the build", "external": "used as it is"}.get(
        before, f"built in {built:.1f}s"
    )
    return resolved, f"{how}; Python {info['python']}, worker pid {info['pid']}"


def _plan(spec: EnvSpec) -> list[_Planned]:
    if spec.smoke:
        planned = []
        for check in spec.smoke:
            location = f"{check.location.file.name}:{check.location.line}"
            if check.run is not None:
                planned.append(_Planned(_label("$ " + check.run), "shell", location, check))
            else:
                planned.append(_Planned(_label(check.code or ""), "python", location, check))
        return _unique(planned)
    location = f"{spec.location.file.name}:{spec.where('requirements').line}"
    return [
        _Planned(f"import {name}", "import", location, distribution=name)
        for name, _optional in requirement_names(spec)
    ]


def _label(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = " ".join(lines[0].split()) if lines else ""
    if len(first) > 200:  # test case names stay whole; the table shortens them itself
        first = first[:197] + "..."
    return first + (" ..." if len(lines) > 1 else "")


def _unique(planned: list[_Planned]) -> list[_Planned]:
    """Give repeated labels their manifest line, so each test case has a name of its own."""
    counts: dict[str, int] = {}
    for check in planned:
        counts[check.label] = counts.get(check.label, 0) + 1
    return [
        _Planned(f"{c.label} [line {c.location.rsplit(':', 1)[-1]}]", c.kind, c.location, c.check)
        if counts[c.label] > 1
        else c
        for c in planned
    ]


def _timeout(spec: EnvSpec) -> float:
    return spec.timeout if spec.timeout is not None else CHECK_TIMEOUT


def _call(runner: Any, spec: EnvSpec, fn: Callable[..., Any], *args: Any) -> Any:
    """``runner.call`` with the check's deadline (the environment's ``timeout:`` or 600 s)."""
    from ._tasks import task as make_task

    task = make_task(env=spec.name, timeout=_timeout(spec))(fn)
    return runner.submit(spec.name, task, *args).result()


def _run_snippet(runner: Any, spec: EnvSpec, check: _Planned) -> Row:
    from ._runtime.smoke import run_snippet

    assert check.check is not None and check.check.code is not None
    started = time.monotonic()
    try:
        result = _call(runner, spec, run_snippet, check.check.code, f"<smoke {check.location}>")
    except Exception as exc:
        return _failure_row(
            spec.name, check.label, "python", FAILED, time.monotonic() - started, exc, check
        )
    return Row(
        spec.name,
        check.label,
        "python",
        PASSED if result["passed"] else FAILED,
        time.monotonic() - started,
        note=result["error"],
        details=result["traceback"],
        output=result["output"],
        location=check.location,
    )


def _run_imports(runner: Any, spec: EnvSpec, planned: list[_Planned]) -> list[Row]:
    from ._runtime.smoke import import_distributions

    names = [check.distribution for check in planned]
    optional = [name for name, conditional in requirement_names(spec) if conditional]
    started = time.monotonic()
    try:
        results = _call(runner, spec, import_distributions, names, optional)
    except Exception as exc:
        seconds = time.monotonic() - started
        return [
            _failure_row(spec.name, check.label, "import", FAILED, seconds, exc, check)
            for check in planned
        ]
    rows = []
    for check, result in zip(planned, results, strict=True):
        outcome = SKIPPED if result["skipped"] else PASSED if result["passed"] else FAILED
        note = result["error"]
        if outcome == PASSED:
            modules = ", ".join(result["modules"])
            note = f"{result['version']}: import {modules}" if modules else result["version"]
        rows.append(
            Row(
                spec.name,
                check.label,
                "import",
                outcome,
                result["seconds"],
                note=note,
                details=result["traceback"],
                output=result["output"],
                location=check.location,
            )
        )
    return rows


def _run_shell(shells: _Shells, spec: EnvSpec, resolved: Any, check: _Planned) -> Row:
    """Run a ``{run: CMD, exit_code: N}`` check as ``envrunner exec`` would run CMD."""
    from ._process import worker_environ

    assert check.check is not None and check.check.run is not None
    interpreter = resolved.interpreter
    if resolved.key is not None:
        virtual_env = resolved.path
    else:
        virtual_env = Path(interpreter.prefix) if interpreter.is_venv else None
    environ = worker_environ(os.environ, resolved.bin_dir, virtual_env, spec.env)
    started = time.monotonic()
    code, output, timed_out = shells.run(
        check.check.run, environ, check.check.location.file.parent, _timeout(spec)
    )
    seconds = time.monotonic() - started
    tail = "\n".join(output.rstrip().splitlines()[-OUTPUT_LINES:])
    expected = check.check.exit_code
    if timed_out:
        note = f"still running after {_timeout(spec):g}s: killed (raise the environment's timeout:)"
    elif code != expected:
        note = f"exit code {code}, expected {expected}"
    else:
        return Row(
            spec.name, check.label, "shell", PASSED, seconds, output=output, location=check.location
        )
    details = f"$ {check.check.run}\n{tail}" if tail else f"$ {check.check.run}\n(no output)"
    return Row(
        spec.name, check.label, "shell", FAILED, seconds, note, details, output, check.location
    )


class _Shells:
    """Runs shell checks, each in a session of its own so that killing it kills what it started;
    remembers the running ones, so that an interrupted run kills them too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[str]] = set()
        self._stopped = False

    def run(
        self, command: str, environ: dict[str, str], cwd: Path, timeout: float
    ) -> tuple[int, str, bool]:
        """Run ``command``; returns its exit code, its output, and whether it timed out."""
        with self._lock:
            if self._stopped:
                return -1, "(not run: interrupted)", False
            process = subprocess.Popen(
                command,
                shell=True,
                cwd=str(cwd),
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
            self._running.add(process)
        try:
            output, _ = process.communicate(timeout=timeout)
            return process.returncode, output, False
        except subprocess.TimeoutExpired:
            _kill_group(process)
            output, _ = process.communicate()
            return process.returncode, output, True
        finally:
            with self._lock:
                self._running.discard(process)

    def stop(self) -> None:
        """Kill every running check (and what it started); start no other."""
        with self._lock:
            self._stopped = True
            for process in self._running:
                _kill_group(process)


def _kill_group(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _failure_row(
    env: str,
    label: str,
    kind: str,
    outcome: str,
    seconds: float,
    exc: BaseException,
    check: _Planned | None = None,
) -> Row:
    """A row for an exception raised around a check (a build, a crash, a timeout)."""
    from ._runtime.errors import BuildError

    text = str(exc) if isinstance(exc, EnvrunnerError) else f"{type(exc).__name__}: {exc}"
    note, _, rest = text.partition("\n")
    if isinstance(exc, BuildError):
        details = "\n".join(
            [
                *(f"| {line}" for line in exc.tail),
                *([f"full log: {exc.log_path}"] if exc.log_path else []),
                *([exc.hint] if exc.hint else []),
            ]
        )
    else:
        details = rest
    location = check.location if check is not None else ""
    return Row(env, label, kind, outcome, seconds, note, details, "", location)


# --------------------------------------------------------------------------- requirements


def requirement_names(spec: EnvSpec) -> list[tuple[str, bool]]:
    """The distributions an environment asks for by name, each with whether a marker guards it.

    Requirement strings and requirements files (following ``-r``, not ``-c``: constraints ask
    for nothing) are read; paths, URLs and options are left out, ``name @ URL`` is kept.
    """
    return [
        (r.name, r.marker is not None) for r in named(spec.requirements, spec.requirements_file)
    ]
