"""``envrunner smoke``'s reporting: rows, the live table, JSON and JUnit XML.

May import: the standard library.

::

    check threads ──► Row ──► Table.add (printed as it lands, under a lock)
    all reports   ──► Table.summary (failures, then counts)
                  ──► as_json ──► one JSON document on stdout
                  ──► write_junit ──► a test suite per environment, a test case per check
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "ERROR",
    "FAILED",
    "OUTPUT_LINES",
    "PASSED",
    "SKIPPED",
    "Report",
    "Row",
    "Table",
    "as_json",
    "write_junit",
]

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
class Report:
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


# --------------------------------------------------------------------------- output


class Table:
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

    def summary(self, reports: Sequence[Report], seconds: float) -> None:
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


def as_json(reports: Sequence[Report], manifest_path: Path, seconds: float) -> dict[str, Any]:
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


def write_junit(reports: Sequence[Report], path: Path, manifest_path: Path, seconds: float) -> None:
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
