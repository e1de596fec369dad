"""Measure envrunner against what users would pick instead, side by side, in one run.

    python benchmarks/run.py [--quick] [--only SECTION ...] [--out DIR] [--home DIR]

Sections (all by default): calls, bulk, start, builds, scale. Each prints a table of medians,
p99s and ratios to the baseline measured in the same run; the whole run is written to
``<out>/results.md`` and ``<out>/results.json`` (default out: ``benchmarks/results``).

The run makes its own manifests and its own ``ENVRUNNER_HOME`` in a temporary folder (unless
``--home`` names one), so it never touches your envrunner cache; the builds section measures
cold builds with empty uv and pip caches of its own. Installers' caches for the environments
the other sections need are your usual ones.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTIONS = ("calls", "bulk", "start", "builds", "scale")
BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Benchmark envrunner against its alternatives in one run.",
    )
    parser.add_argument("--quick", action="store_true", help="few repetitions (under a minute)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)})",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results", help="where results.md/.json go"
    )
    parser.add_argument(
        "--home", type=Path, help="ENVRUNNER_HOME to build in (default: a temporary one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser


def _blas() -> dict[str, Any]:
    """Unset OpenBLAS's core-type overrides for this run (they slow numpy) and say so."""
    found = {name: os.environ.pop(name) for name in BLAS_VARIABLES if name in os.environ}
    info: dict[str, Any] = {"unset": found}
    kernel = "unknown (threadpoolctl is not installed)"
    try:
        import numpy  # noqa: F401 - loaded so that threadpoolctl sees its BLAS
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            pool = pools[0]
            kernel = (
                f"{pool.get('internal_api')} {pool.get('version')}, "
                f"kernel {pool.get('architecture')}, {pool.get('num_threads')} threads"
            )
    except ImportError:
        pass
    unset = ", ".join(f"{k}={v}" for k, v in found.items())
    info["text"] = kernel + (f"; unset for this run: {unset}" if unset else "")
    return info


def _compile_envrunner() -> str:
    """Compile envrunner's modules, as pip does when it installs a wheel.

    An editable install under ``PYTHONDONTWRITEBYTECODE=1`` (this machine's default) would
    otherwise compile every module from source in each new process, which is what no
    installed copy does and which adds tens of milliseconds to every CLI and worker start.
    """
    import compileall

    import envrunner

    package = Path(envrunner.__file__).parent
    compiled = compileall.compile_dir(str(package), quiet=1)
    return f"compiled under {package}" if compiled else "compiling failed (measured from source)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    selected = [name for name in SECTIONS if not args.only or name in args.only]
    blas = _blas()  # before anything imports numpy

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import harness

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="erbench-"))
    home = args.home.absolute() if args.home else tmp / "home"
    os.environ["ENVRUNNER_HOME"] = str(home)
    os.environ.pop("ENVRUNNER_MANIFEST", None)
    pythons = harness.find_pythons()
    bench = harness.Bench(
        quick=args.quick, root=ROOT, tmp=tmp, home=home, pythons=pythons, selected=selected
    )
    command = "python benchmarks/run.py" + "".join(
        " " + shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    facts = harness.machine_facts(pythons, blas)
    print(f"{command}\n")
    for line in harness.facts_lines(facts):
        print(line)
    print(f"- ENVRUNNER_HOME for this run: {home}")
    print(f"- envrunner's bytecode: {_compile_envrunner()}")

    sections: list[harness.Section] = []
    try:
        for name in selected:
            module = __import__(f"sections.{name}", fromlist=["run"])
            section = harness.Section(name, module.TITLE)
            print(f"\n-- {section.title}", flush=True)
            begin = time.perf_counter()
            module.run(bench, section)
            section.seconds = time.perf_counter() - begin
            section.compute_ratios()
            harness.print_table(section)
            sections.append(section)
    finally:
        import systems

        systems.stop_ray()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"\nkept {tmp}")

    import targets

    verdicts = targets.evaluate({section.name: section for section in sections})
    if verdicts:
        print("\n== Targets")
        for verdict in verdicts:
            print(
                f"  {verdict['verdict']:4}  {verdict['target']}: "
                f"{verdict['measured']} (limit {verdict['limit']})"
            )
    md, js = harness.write_results(
        args.out, command, facts, sections, verdicts, time.perf_counter() - started
    )
    print(f"\nwrote {md} and {js} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
