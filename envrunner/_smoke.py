"""``envrunner smoke``: prove that every environment still builds and works.

May import: the standard library and the caller-side ``envrunner`` modules.

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
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ._manifest import EnvSpec, Manifest, SmokeCheck
from ._runtime.errors import EnvrunnerError

__all__ = ["CHECK_TIMEOUT", "Row", "requirement_names", "smoke"]

#: Seconds one check may take when the environment sets no ``timeout:``.
CHECK_TIMEOUT = 600.0
#: Lines of a failed shell command's output that the report quotes.
OUTPUT_LINES = 20

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"


@dataclass
class Row:
    """The outcome of one check of one environment.

    Attributes:
        env: The environment's name.
        check: What was checked: ``setup``, ``import six``, a snippet's first line, ``$ cmd``.
        kind: ``setup``, ``python``, ``shell`` or ``import``.
        outcome: ``passed``, ``failed``, ``error`` (setup failed) or ``skipped``.
        seconds: How long it took.
        note: One line: how setup went, or why the check failed.
        details: The traceback, the installer's last lines, or the command's last output lines.
        output: What the check printed.
        location: Where the manifest declares the check (``file:line``).
    """

    env: str
    check: str
    kind: str
    outcome: str
    seconds: float = 0.0
    note: str = ""
    details: str = ""
    output: str = ""
    location: str = ""


@dataclass
class _Report:
    name: str
    python: str
    rows: list[Row] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        outcomes = {row.outcome for row in self.rows}
        for outcome in (ERROR, FAILED):
            if outcome in outcomes:
                return outcome
        return PASSED


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
    table = _Table(out, max((len(spec.name) for spec in specs), default=0))
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
        print(json.dumps(_json(reports, manifest.path, seconds), indent=2))
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
) -> _Report:
    """Set up one environment and run its checks; never raises for what it checks."""
    report = _Report(spec.name, spec.python)

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

_NAME = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*(.*)")
_ARCHIVES = (".whl", ".tar.gz", ".tgz", ".zip", ".tar.bz2")


def requirement_names(spec: EnvSpec) -> list[tuple[str, bool]]:
    """The distributions an environment asks for by name, each with whether a marker guards it.

    Requirement strings and requirements files (following ``-r``, not ``-c``: constraints ask
    for nothing) are read; paths, URLs and options are left out, ``name @ URL`` is kept.
    """
    lines = list(spec.requirements)
    if spec.requirements_file is not None:
        lines += _file_lines(spec.requirements_file, set())
    found: dict[str, bool] = {}
    for line in lines:
        parsed = _requirement(line)
        if parsed is not None:
            name, conditional = parsed
            key = name.lower().replace("_", "-").replace(".", "-")
            if key not in {n.lower().replace("_", "-").replace(".", "-") for n in found}:
                found[name] = conditional
    return list(found.items())


def _file_lines(path: Path, seen: set[Path]) -> list[str]:
    if path in seen or not path.is_file():
        return []
    seen.add(path)
    text = path.read_text(errors="replace").replace("\\\n", " ")
    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        for flag in ("-r", "--requirement"):
            if line.startswith(flag) and line[len(flag) : len(flag) + 1] in (" ", "=", "\t"):
                included = Path(line[len(flag) + 1 :].strip())
                lines += _file_lines(path.parent / included, seen)
                break
        else:
            lines.append(line)
    return lines


def _requirement(line: str) -> tuple[str, bool] | None:
    line = re.sub(r"(^|\s)#.*", "", line).strip()
    if not line or line.startswith("-"):
        return None
    match = _NAME.fullmatch(line)
    if match is None:
        return None
    name, rest = match.groups()
    if rest and rest[0] not in "<>=!~;@(,":
        return None  # a path or a URL: "./pkg", "git+https://...", "C:\\pkg"
    if not rest.startswith("@") and line.lower().endswith(_ARCHIVES):
        return None  # an archive's file name: "thing-1.0.tar.gz"
    return name, ";" in rest


# --------------------------------------------------------------------------- output


class _Table:
    """Rows printed as they land, from any thread; then failures and a summary."""

    def __init__(self, stream: TextIO, name_width: int) -> None:
        self.stream = stream
        self.widths = (max(name_width, len("ENVIRONMENT")), 44, 7, 7)
        self.lock = threading.Lock()
        self.started = False
        self.stopped = False  # interrupted: rows landing now say nothing new

    def _line(self, cells: Sequence[str]) -> str:
        env, check, outcome, seconds, note = cells
        w = self.widths
        return (
            f"{env:<{w[0]}}  {check:<{w[1]}}  {outcome:<{w[2]}}  {seconds:>{w[3]}}  {note}"
        ).rstrip()

    def add(self, row: Row) -> None:
        check = row.check if len(row.check) <= self.widths[1] else row.check[:41] + "..."
        note = row.note if len(row.note) <= 100 else row.note[:97] + "..."
        seconds = "" if row.outcome == SKIPPED else f"{row.seconds:.1f}s"
        line = self._line((row.env, check, row.outcome, seconds, note))
        with self.lock:
            if self.stopped:
                return
            if not self.started:
                self.started = True
                self.stream.write(self._line(("ENVIRONMENT", "CHECK", "OUTCOME", "TIME", "NOTE")))
                self.stream.write("\n")
            self.stream.write(line + "\n")
            self.stream.flush()

    def summary(self, reports: Sequence[_Report], seconds: float) -> None:
        rows = [row for report in reports for row in report.rows]
        bad = [row for row in rows if row.outcome in (FAILED, ERROR)]
        out = self.stream
        if bad:
            out.write("\nFAILURES\n")
            for row in bad:
                where = f"  ({row.location})" if row.location else ""
                out.write(f"--- {row.env}: {row.check}{where}: {row.outcome}\n")
                if row.note and row.note in row.details:
                    body = row.details  # a traceback ends with its error line
                else:
                    body = "\n".join(part for part in (row.note, row.details) if part)
                out.write("".join(f"    {line}\n" for line in body.rstrip().splitlines()))
                if row.output.strip() and row.kind != "shell":
                    out.write("    printed:\n")
                    tail = row.output.rstrip().splitlines()[-OUTPUT_LINES:]
                    out.write("".join(f"    | {line}\n" for line in tail))
        counts = _counts(rows)
        parts = [f"{counts[o]} {o}" for o in (PASSED, FAILED, ERROR, SKIPPED) if counts[o]]
        environments = f"{len(reports)} environment{'s' if len(reports) != 1 else ''}"
        out.write(f"\n{environments}: {', '.join(parts) or 'nothing checked'} in {seconds:.1f}s\n")
        out.flush()


def _counts(rows: Sequence[Row]) -> dict[str, int]:
    counts = dict.fromkeys((PASSED, FAILED, ERROR, SKIPPED), 0)
    for row in rows:
        counts[row.outcome] += 1
    return counts


def _json(reports: Sequence[_Report], manifest_path: Path, seconds: float) -> dict[str, Any]:
    rows = [row for report in reports for row in report.rows]
    return {
        "manifest": str(manifest_path),
        "passed": all(report.outcome == PASSED for report in reports),
        "seconds": round(seconds, 3),
        "counts": _counts(rows),
        "environments": [
            {
                "name": report.name,
                "python": report.python,
                "outcome": report.outcome,
                "checks": [
                    {**asdict(row), "seconds": round(row.seconds, 3)} for row in report.rows
                ],
            }
            for report in reports
        ],
    }


# XML 1.0 allows tab, newline, carriage return and most of the rest: installer output (colour
# codes, say) may hold what it does not.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    return _XML_ILLEGAL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def write_junit(
    reports: Sequence[_Report], path: Path, manifest_path: Path, seconds: float
) -> None:
    """Write a JUnit XML report: a test suite per environment, a test case per check.

    The shape is the one CI systems read (Jenkins' ``junit-10.xsd``): ``testsuites`` >
    ``testsuite`` (name, tests, failures, errors, skipped, time, timestamp, hostname) >
    ``testcase`` (name, classname, time) holding at most one ``failure``, ``error`` or
    ``skipped`` (with a ``message``) and the check's ``system-out``.
    """
    import socket
    import xml.etree.ElementTree as ET

    rows = [row for report in reports for row in report.rows]
    counts = _counts(rows)
    root = ET.Element(
        "testsuites",
        name="envrunner smoke",
        tests=str(len(rows)),
        failures=str(counts[FAILED]),
        errors=str(counts[ERROR]),
        time=f"{seconds:.3f}",
    )
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for report in reports:
        suite_counts = _counts(report.rows)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=report.name,
            tests=str(len(report.rows)),
            failures=str(suite_counts[FAILED]),
            errors=str(suite_counts[ERROR]),
            skipped=str(suite_counts[SKIPPED]),
            time=f"{sum(row.seconds for row in report.rows):.3f}",
            timestamp=stamp,
            hostname=socket.gethostname(),
        )
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="manifest", value=str(manifest_path))
        ET.SubElement(properties, "property", name="python", value=report.python)
        for row in report.rows:
            case = ET.SubElement(
                suite,
                "testcase",
                name=_xml_text(row.check),
                classname=f"smoke.{report.name}",
                time=f"{row.seconds:.3f}",
            )
            if row.outcome in (FAILED, ERROR):
                element = ET.SubElement(
                    case,
                    "failure" if row.outcome == FAILED else "error",
                    message=_xml_text(row.note or row.outcome),
                    type=row.kind,
                )
                where = f"{row.location}\n" if row.location else ""
                element.text = _xml_text(where + "\n".join(p for p in (row.note, row.details) if p))
            elif row.outcome == SKIPPED:
                ET.SubElement(case, "skipped", message=_xml_text(row.note))
            if row.output:
                ET.SubElement(case, "system-out").text = _xml_text(row.output)
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
