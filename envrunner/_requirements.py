"""The one reader of requirement strings and pip requirements files.

May import: the standard library and packaging.

What it reads::

    "numpy>=2; python_version>'3.9'"  ──►  Requirement (name, specifier, marker)  (packaging)
    "./pkg", "git+https://...", "x.whl", "-e ..."  ──►  None: not a named requirement
    requirements.txt  ──►  logical lines (continuations joined, comments dropped), with the
                           ``-r``/``-c`` includes found, relative to the including file

The manifest (``_yaml``), the build records (``_records``) and ``envrunner smoke`` all read
requirements here, so that they agree on what a line asks for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

__all__ = [
    "canonical",
    "include_of",
    "logical_lines",
    "named",
    "parse",
    "requested",
]

_INCLUDE = re.compile(r"(?:-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+|(?<=-r)|(?<=-c))(\S+)")
_COMMENT = re.compile(r"(^|\s+)#.*$")
_ARCHIVES = (".whl", ".tar.gz", ".tgz", ".zip", ".tar.bz2")


def canonical(name: str) -> str:
    """A distribution name as the package index compares it (``Foo_Bar`` -> ``foo-bar``)."""
    return str(canonicalize_name(name))


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Join continued lines and drop comments, as pip does: (first line number, content)."""
    lines: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not parts:
            start = number
        if _COMMENT.match(line):
            line = " " + line  # noqa: PLW2901 - so the comment is stripped after joining
        elif line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        lines.append((start, _COMMENT.sub("", "".join(parts)).strip()))
        parts = []
    if parts:
        lines.append((start, _COMMENT.sub("", "".join(parts)).strip()))
    return lines


def include_of(line: str) -> tuple[str, str] | None:
    """``("-r" or "-c", target)`` when a logical line includes another file, else None."""
    match = _INCLUDE.match(line)
    if match is None:
        return None
    kind = "-c" if line.startswith(("-c", "--constraint")) else "-r"
    return kind, match.group(1)


def parse(line: str) -> Requirement | None:
    """The named requirement a line asks for, or None (a path, URL, archive, option or blank).

    Options after the requirement (``--hash=...``) are ignored; ``name @ URL`` is named.
    """
    text = _COMMENT.sub("", line).strip()
    text = re.split(r"\s--?[A-Za-z]", " " + text, maxsplit=1)[0].strip()
    if not text or text.startswith("-"):
        return None
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return None
    if requirement.url is None and text.lower().endswith(_ARCHIVES):
        return None  # an archive's file name such as "thing-1.0.tar.gz"
    return requirement


def _file_lines(path: Path, seen: set[Path]) -> list[str]:
    """A file's requirement lines, with the files it includes by ``-r`` (not ``-c``) inlined."""
    real = path.resolve()
    if real in seen or not path.is_file():
        return []
    seen.add(real)
    lines: list[str] = []
    for _number, line in logical_lines(path.read_text(encoding="utf-8-sig", errors="replace")):
        include = include_of(line)
        if include is None:
            lines.append(line)
        elif include[0] == "-r":
            child = Path(include[1]).expanduser()
            lines += _file_lines(child if child.is_absolute() else path.parent / child, seen)
    return lines


def named(lines: Iterable[str], requirements_file: Path | None = None) -> list[Requirement]:
    """The named requirements of strings and a requirements file (its ``-r`` includes followed;
    ``-c`` constraints ask for nothing), first of each name kept, in order."""
    everything = list(lines)
    if requirements_file is not None:
        everything += _file_lines(requirements_file, set())
    found: dict[str, Requirement] = {}
    for line in everything:
        requirement = parse(line)
        if requirement is not None:
            found.setdefault(canonical(requirement.name), requirement)
    return list(found.values())


def requested(lines: Iterable[str], requirements_file: Path | None = None) -> set[str]:
    """The canonical names of what :func:`named` finds."""
    return {canonical(r.name) for r in named(lines, requirements_file)}
