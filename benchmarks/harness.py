"""What every section shares: samples and their statistics, tables, machine facts, results files.

A section adds *rows*: one system (envrunner, raw pyzmq, multiprocessing, ...) measured on one
case (a payload size, a Python version), as a list of samples in one unit. Within a case one
row is the *baseline* (the floor, or what users would pick instead), and every row's ratio is its
median divided by the baseline's median, in the row's own unit: above 1 means slower for times
and sizes, faster for rates.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import envrunner

HERE = Path(__file__).resolve().parent

#: Units where more is better; for the others (times, sizes) less is better.
RATE_UNITS = {"calls/s", "items/s", "GB/s"}


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``samples`` (``fraction`` in 0..1)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Row:
    """One system measured on one case: its samples in one unit."""

    case: str
    system: str
    unit: str
    samples: list[float]
    baseline: bool = False
    note: str = ""
    ratio: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def tail(self) -> float:
        """The slow tail: p99 of times and sizes, p1 of rates (the slowest 1% either way)."""
        if self.unit in RATE_UNITS:
            return percentile(self.samples, 0.01)
        return percentile(self.samples, 0.99)

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "system": self.system,
            "unit": self.unit,
            "median": self.median,
            "p99": self.tail,
            "n": len(self.samples),
            "ratio": self.ratio,
            "baseline": self.baseline,
            "note": self.note,
        }


@dataclass
class Section:
    """The rows of one section, with notes (what was skipped, which caches were cold)."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(
        self,
        case: str,
        system: str,
        unit: str,
        samples: Iterable[float],
        *,
        baseline: bool = False,
        note: str = "",
    ) -> Row:
        values = [float(s) for s in samples]
        if not values:
            raise ValueError(f"{self.name}: no samples for {case} / {system}")
        row = Row(case, system, unit, values, baseline, note)
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        if text in self.notes:
            return
        print(f"  note: {text}", flush=True)
        self.notes.append(text)

    def skip(self, system: str, why: str) -> None:
        self.note(f"{system} skipped: {why}")

    def find(self, case: str, system: str) -> Row | None:
        for row in self.rows:
            if row.case == case and row.system == system:
                return row
        return None

    def compute_ratios(self) -> None:
        baselines = {row.case: row for row in self.rows if row.baseline}
        for row in self.rows:
            base = baselines.get(row.case)
            if base is not None and base.median:
                row.ratio = row.median / base.median

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "seconds": round(self.seconds, 1),
            "notes": self.notes,
            "rows": [row.as_dict() for row in self.rows],
        }


# --------------------------------------------------------------------------- formatting


def number(value: float | None) -> str:
    """A number with three significant digits or so, for tables."""
    if value is None:
        return ""
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def ratio_text(row: Row) -> str:
    if row.baseline:
        return "baseline"
    if row.ratio is None:
        return ""
    return f"{row.ratio:.2f}x"


HEADERS = ["case", "system", "median", "p99", "unit", "n", "÷ baseline", "note"]


def table_lines(section: Section) -> list[str]:
    """The section's rows as a Markdown table."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in section.rows:
        lines.append("| " + " | ".join(_cells(row)) + " |")
    return lines


def _cells(row: Row) -> list[str]:
    """One row's cells, in the order of HEADERS."""
    return [
        row.case,
        row.system,
        number(row.median),
        number(row.tail),
        row.unit,
        str(len(row.samples)),
        ratio_text(row),
        row.note,
    ]


def print_table(section: Section) -> None:
    """The section's rows as an aligned text table on stdout."""
    cells = [HEADERS]
    cells.extend(_cells(row) for row in section.rows)
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    print(f"\n== {section.title} ({section.seconds:.0f} s)")
    for index, line in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    sys.stdout.flush()


# --------------------------------------------------------------------------- the machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _first(text: str, prefix: str) -> str:
    for line in text.splitlines():
        if line.startswith(prefix):
            return line.split(":", 1)[1].strip()
    return ""


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def uv_version() -> str | None:
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    try:
        out = subprocess.run([uv, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip().removeprefix("uv ")


def envrunner_revision() -> str:
    """The commit of the envrunner being measured, and whether its code differs from it."""
    import envrunner

    package = Path(envrunner.__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=package,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=package,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        # An exported tree (git archive) may say where it came from in a REVISION file.
        marker = package.parent / "REVISION"
        origin = f", {marker.read_text().strip()}" if marker.is_file() else ""
        return f"not a git checkout ({package}{origin})"
    return head + (" with uncommitted changes under envrunner/" if dirty else " (clean)")


def machine_facts(pythons: dict[str, Path], blas: dict[str, Any]) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpuinfo = _read("/proc/cpuinfo")
    meminfo = _read("/proc/meminfo")
    mem_kib = _first(meminfo, "MemTotal").split()[0] if _first(meminfo, "MemTotal") else "0"
    packages = {
        name: package_version(name)
        for name in (
            "envrunner",
            "pyzmq",
            "msgpack",
            "cloudpickle",
            "numpy",
            "uv",
            "virtualenv",
            "pip",
            "execnet",
            "ray",
        )
    }
    packages["uv (binary)"] = uv_version()
    try:
        import zmq

        packages["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    return {
        "cpu": _first(cpuinfo, "model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem_kib) / 1024 / 1024, 1),
        "kernel": f"{platform.system()} {platform.release()}",
        "virtualized": "hypervisor" in _first(cpuinfo, "flags").split(),
        "caller_python": platform.python_version(),
        "pythons": {
            minor: str(path)
            for minor, path in sorted(pythons.items(), key=lambda item: _version(item[0]))
        },
        "packages": packages,
        "blas": blas,
        "envrunner_revision": envrunner_revision(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def _version(minor: str) -> tuple[int, ...]:
    return tuple(int(part) for part in minor.split("."))


def facts_lines(facts: dict[str, Any]) -> list[str]:
    packages = ", ".join(f"{k} {v}" for k, v in facts["packages"].items() if v)
    missing = ", ".join(k for k, v in facts["packages"].items() if not v)
    blas = facts["blas"]
    lines = [
        f"- CPU: {facts['cpu']}, {facts['cores']} cores"
        + (" (a virtual machine)" if facts["virtualized"] else "")
        + f"; memory {facts['memory_gib']} GiB; {facts['kernel']}",
        f"- Caller: Python {facts['caller_python']}; Pythons found: "
        + ", ".join(f"{minor} ({path})" for minor, path in facts["pythons"].items()),
        f"- Packages: {packages}" + (f"; not installed: {missing}" if missing else ""),
        f"- BLAS: {blas.get('text', 'unknown')}",
        f"- envrunner revision: {facts['envrunner_revision']}; measured {facts['date']}",
    ]
    return lines


# --------------------------------------------------------------------------- results files


def write_results(
    out: Path,
    command: str,
    facts: dict[str, Any],
    sections: list[Section],
    targets: list[dict[str, Any]],
    seconds: float,
) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.json`` into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md = [
        "# envrunner benchmarks",
        "",
        f"Command: `{command}` ({seconds:.0f} s)",
        "",
        *facts_lines(facts),
        "",
        "Columns: median and p99 of the samples (for rates, the p99 column is the slow tail:",
        "the 1st percentile); `÷ baseline` is the median over the baseline row's median in the",
        "same unit (for times above 1 is slower, for rates below 1 is slower).",
    ]
    for section in sections:
        md += ["", f"## {section.title}", ""]
        md += table_lines(section)
        if section.notes:
            md.append("")
            md += [f"- {note}" for note in section.notes]
    if targets:
        md += ["", "## Targets", "", "| target | measured | limit | verdict |", "|---|---|---|---|"]
        for target in targets:
            md.append(
                f"| {target['target']} | {target['measured']} | {target['limit']} "
                f"| {target['verdict']} |"
            )
    md_path = out / "results.md"
    md_path.write_text("\n".join(md) + "\n")
    json_path = out / "results.json"
    document = {
        "command": command,
        "seconds": round(seconds, 1),
        "machine": facts,
        "sections": {section.name: section.as_dict() for section in sections},
        "targets": targets,
    }
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    return md_path, json_path


# --------------------------------------------------------------------------- processes


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size of a process in KiB, from ``/proc/<pid>/status``."""
    value = _first(_read(f"/proc/{pid}/status"), "VmRSS")
    return int(value.split()[0]) if value else -1


def timed_run(argv: list[str], **kwargs: Any) -> float:
    """Run a command to completion; return its wall time in seconds (it must succeed)."""
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited with {result.returncode}: {result.stderr[-2000:]}"
        )
    return elapsed


# --------------------------------------------------------------------------- the run's context

MINORS = ("3.9", "3.10", "3.11", "3.12", "3.13")
OTHER_PREFERENCE = ("3.12", "3.13", "3.10", "3.9")


def find_pythons() -> dict[str, Path]:
    """The Pythons of ``MINORS`` on this machine: pyenv's (newest patch), else on PATH."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found: dict[str, Path] = {}
    for minor in MINORS:

        def patch(path: Path) -> int:
            tail = path.parent.parent.name.split(".")[-1]
            return int(tail) if tail.isdigit() else -1

        candidates = sorted(root.glob(f"{minor}.*/bin/python{minor}"), key=patch)
        if candidates:
            found[minor] = candidates[-1]
        elif shutil.which(f"python{minor}"):
            found[minor] = Path(str(shutil.which(f"python{minor}")))
    caller = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if caller not in found:
        found[caller] = Path(sys.executable)
    return found


@dataclass
class Bench:
    """What every section of one run shares: options, folders, Pythons, manifests."""

    quick: bool
    root: Path
    tmp: Path
    home: Path
    pythons: dict[str, Path]
    selected: list[str]

    @property
    def caller_minor(self) -> str:
        return f"{sys.version_info[0]}.{sys.version_info[1]}"

    @property
    def other_minor(self) -> str | None:
        for minor in OTHER_PREFERENCE:
            if minor in self.pythons and minor != self.caller_minor:
                return minor
        return None

    def count(self, full: int, quick: int) -> int:
        """How many repetitions: ``quick`` with ``--quick``, else ``full``."""
        return quick if self.quick else full

    def manifest(self, name: str, environments: dict[str, dict[str, Any]]) -> Path:
        """Write a manifest (JSON, which YAML reads) into its own folder; return its path."""
        folder = self.tmp / "manifests" / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "environments.yaml"
        path.write_text(json.dumps({"version": 1, "environments": environments}, indent=2))
        return path

    @staticmethod
    def prepare(runner: envrunner.Runner, section: Section, about: str) -> None:
        """Build (or find) the runner's environments before measuring, and note how long."""
        started = time.perf_counter()
        runner.prepare()
        section.note(
            f"setup: environments built or found in {time.perf_counter() - started:.1f} s "
            f"(not measured); {about}"
        )

    def core_manifest(self) -> Path:
        """``same`` (the caller's Python), ``same-2w`` (the same, 2 workers), ``remote`` (the
        same, for a worker joining over tcp), ``other``.

        They hold numpy when the bulk section runs (arrays need it on both ends), else nothing
        but the worker runtime.
        """
        requirements = ["numpy"] if "bulk" in self.selected else []
        envs: dict[str, dict[str, Any]] = {
            "same": {"python": self.caller_minor, "requirements": requirements},
            "same-2w": {"python": self.caller_minor, "requirements": requirements, "workers": 2},
            # served by a worker started with `envrunner worker`, over tcp with CurveZMQ
            "remote": {"python": self.caller_minor, "requirements": requirements},
        }
        if self.other_minor is not None:
            envs["other"] = {"python": self.other_minor, "requirements": requirements}
        return self.manifest("core", envs)

    def bare_manifest(self, minors: Iterable[str]) -> Path:
        """One environment per Python, ``py3_11`` and so on, with only the worker runtime."""
        envs = {
            "py" + minor.replace(".", "_"): {"python": minor, "requirements": []}
            for minor in minors
        }
        return self.manifest("bare", envs)


def env_python(manifest: Path, env: str) -> Path:
    """The interpreter of a built environment, as ``envrunner path`` tells it."""
    out = subprocess.run(
        [sys.executable, "-m", "envrunner", "path", "--manifest", str(manifest), env],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(out) / "bin" / "python"


def interleave(rounds: int, systems: list[Any]) -> Iterable[tuple[int, Any]]:
    """``(round, system)`` pairs, each round in a rotated order so that no system goes first."""
    for index in range(rounds):
        shift = index % max(1, len(systems))
        for system in systems[shift:] + systems[:shift]:
            yield index, system
