"""The files a manifest is made of, read with line numbers: YAML, and pip requirements files.

May import: the standard library, yaml, ``envrunner._requirements``, ``envrunner._runtime.errors``,
``envrunner._runtime.hints``.

PyYAML's ``safe_load`` forgets where each value was written and silently keeps the last of two
duplicate keys. The manifest needs both, so :class:`NodeReader` composes the node graph with a
``SafeLoader`` subclass and walks it: every key becomes an :class:`Entry` that knows its line and
its dotted path, every wrong value becomes a :class:`Problem` in one shared list, and reading goes
on so that one run reports everything wrong at once. :func:`read_requirement_files` does the same
for the requirements files a manifest names, following their ``-r``/``-c`` includes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ._requirements import include_of, logical_lines
from ._runtime.errors import Problem
from ._runtime.hints import closest

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_MERGE = "tag:yaml.org,2002:merge"


#: Deeper nesting is refused where it starts: PyYAML composes nodes recursively, and thousands
#: of levels would end in a RecursionError. A manifest needs about six.
MAX_DEPTH = 100


class ManifestLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` under our own name, so nothing we do ever changes the shared class."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


@dataclass(frozen=True)
class Entry:
    """One value and where it was written.

    Attributes:
        key: The key as written (for a list item, its index).
        path: The dotted path, such as ``environments.torch.python`` or ``...smoke[1]``.
        line: The 1-based line of the key (of the item, for a list item).
        node: The value's YAML node.
    """

    key: str
    path: str
    line: int
    node: yaml.Node

    @property
    def is_null(self) -> bool:
        """True for ``key:`` with nothing after it, ``~`` or ``null``."""
        return isinstance(self.node, yaml.ScalarNode) and self.node.tag == _NULL


def line_of(node: yaml.Node) -> int:
    """The 1-based line a node starts on."""
    return int(node.start_mark.line) + 1


class NodeReader:
    """Reads one YAML file's nodes into Python values, collecting every problem on the way.

    Args:
        file: The file's name as messages show it.
        problems: The list every problem is appended to.
    """

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        self._loader = ManifestLoader("")

    # ------------------------------------------------------------------ problems

    def problem(self, line: int, key: str, message: str, hint: str = "") -> None:
        """Record a problem in this file."""
        self.problems.append(Problem(self.file, line, key, message, hint))

    def expected(self, entry: Entry, what: str, hint: str = "") -> None:
        """Record that ``entry`` holds something other than ``what``."""
        self.problem(entry.line, entry.path, f"expected {what}, got {describe(entry.node)}", hint)

    # ------------------------------------------------------------------ structure

    def compose(self, text: str) -> yaml.Node | None:
        """Compose ``text`` into one document's node; None (with a problem) if it is not YAML."""
        loader = ManifestLoader(text)
        try:
            return loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = int(mark.line) + 1 if mark is not None else 0
            what = " ".join(part for part in (exc.context, exc.problem) if part)
            hint = "check the indentation and quoting on this line and the one before"
            if "'\\t'" in what:
                hint = "indent with spaces: YAML does not allow tabs"
            elif f"deeper than {MAX_DEPTH}" in what:
                hint = "a manifest is a few levels deep: look for unclosed '[' or '{' here"
            elif "single document" in what:
                hint = "keep one document: remove the '---' line and what follows it"
            self.problem(line, "", f"invalid YAML: {what}", hint)
        except yaml.YAMLError as exc:
            self.problem(0, "", f"invalid YAML: {exc}", "save the file as UTF-8 text")
        finally:
            loader.dispose()
        return None

    def entries(
        self, entry: Entry, what: str = "a mapping of keys to values"
    ) -> dict[str, Entry] | None:
        """The keys of a mapping, in order; None (with a problem naming ``what``) otherwise.

        Duplicate keys and keys that are not plain scalars are reported; YAML merge keys
        (``<<: *anchor``) are followed.
        """
        node = entry.node
        if not isinstance(node, yaml.MappingNode):
            self.expected(entry, what)
            return None
        prefix = f"{entry.path}." if entry.path else ""
        own = [(k, v) for k, v in node.value if k.tag != _MERGE]
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        if len(own) != len(node.value):
            # flatten_mapping puts the merged pairs first, then the mapping's own pairs.
            flat = yaml.MappingNode(node.tag, list(node.value), node.start_mark, node.end_mark)
            try:
                self._loader.flatten_mapping(flat)
            except yaml.YAMLError as exc:
                self.problem(entry.line, entry.path, f"cannot merge: {exc}")
                return None
            merged = flat.value[: len(flat.value) - len(own)]
        result: dict[str, Entry] = {}
        for key_node, value_node in merged:
            key = str(key_node.value)
            result[key] = Entry(key, prefix + key, line_of(key_node), value_node)
        first: dict[str, int] = {}
        for key_node, value_node in own:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(
                    line_of(key_node), entry.path, "keys must be plain names, not lists or maps"
                )
                continue
            key, line = str(key_node.value), line_of(key_node)
            if key in first:
                lines = (
                    f"twice on line {line}"
                    if first[key] == line
                    else f"on lines {first[key]} and {line}"
                )
                self.problem(
                    line,
                    prefix + key,
                    f"duplicate key: written {lines}",
                    "keep one of them: YAML would silently use the last",
                )
                continue
            first[key] = line
            result[key] = Entry(key, prefix + key, line, value_node)
        return result

    def items(self, entry: Entry, what: str, hint: str = "") -> list[Entry] | None:
        """The items of a list; None (with a problem naming ``what``) if it is not a list."""
        if not isinstance(entry.node, yaml.SequenceNode):
            self.expected(entry, what, hint)
            return None
        return [
            Entry(str(i), f"{entry.path}[{i}]", line_of(item), item)
            for i, item in enumerate(entry.node.value)
        ]

    def unknown_keys(self, entries: dict[str, Entry], valid: Sequence[str]) -> None:
        """Report every key of ``entries`` not in ``valid``, with the nearest valid one."""
        for key, entry in entries.items():
            if key not in valid:
                near = closest(key, valid)
                hint = f"did you mean {near!r}?" if near else "valid keys: " + ", ".join(valid)
                self.problem(entry.line, entry.path, "unknown key", hint)

    # ------------------------------------------------------------------ scalars

    def scalar(self, entry: Entry) -> object:
        """The value of a scalar as the safe loader builds it (None for collections or errors)."""
        if not isinstance(entry.node, yaml.ScalarNode):
            return None
        try:
            return self._loader.construct_object(entry.node, deep=True)
        except (yaml.YAMLError, ValueError) as exc:
            self.problem(entry.line, entry.path, f"cannot read this value: {exc}")
            return None

    def raw(self, entry: Entry) -> str | None:
        """A scalar's text exactly as written (``3.10`` stays ``"3.10"``); None for null."""
        if isinstance(entry.node, yaml.ScalarNode) and entry.node.tag != _NULL:
            return str(entry.node.value)
        return None

    def text(self, entry: Entry, what: str = "a string", hint: str = "") -> str | None:
        """A string value; None (with a problem) for anything else."""
        if isinstance(entry.node, yaml.ScalarNode) and entry.node.tag == _STR:
            return str(entry.node.value)
        self.expected(entry, what, hint)
        return None

    def whole(self, entry: Entry, minimum: int, hint: str = "") -> int | None:
        """A whole number >= ``minimum`` (booleans are not numbers)."""
        value = self.scalar(entry)
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return value
        self.expected(entry, f"a whole number >= {minimum}", hint)
        return None

    def number(self, entry: Entry, above: float, inclusive: bool, hint: str = "") -> float | None:
        """A number above ``above`` (or equal to it when ``inclusive``), or null."""
        if entry.is_null:
            return None
        value = self.scalar(entry)
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (value > above or (inclusive and value == above))
        ):
            return float(value)
        bound = f">= {above:g}" if inclusive else f"> {above:g}"
        self.expected(entry, f"a number of seconds {bound} or null", hint)
        return None

    def flag(self, entry: Entry) -> bool | None:
        """A boolean (``true`` or ``false``)."""
        if isinstance(entry.node, yaml.ScalarNode) and entry.node.tag == _BOOL:
            return bool(self.scalar(entry))
        self.expected(entry, "true or false")
        return None


def describe(node: yaml.Node) -> str:
    """Say what a node holds, for "expected X, got Y" messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing (null)"
    if node.tag == _STR:
        return repr(str(node.value))
    return str(node.value)


def shown_path(path: Path) -> str:
    """``path`` as messages show it: relative to the current folder when inside it."""
    try:
        relative = os.path.relpath(path)
    except (OSError, ValueError):
        return str(path)
    return str(path) if relative.startswith("..") else relative


def read_requirement_files(main: Path, key: str, problems: list[Problem]) -> tuple[Path, ...]:
    """A requirements file and every file it includes with ``-r``/``-c``, depth first.

    Includes are relative to the including file; a file reached twice is read once (so cycles
    end). Other lines (requirements, options, ``--hash``, continuations) are not interpreted.

    Args:
        main: The requirements file the manifest names (it exists).
        key: The manifest key that names it, for problems.
        problems: Where a missing or unreadable included file is reported, at the line and in
            the file that includes it.

    Returns:
        ``main`` first, then each included file in order of first appearance.
    """
    files: list[Path] = []
    seen: set[Path] = set()
    pending = [main]
    while pending:
        path = pending.pop()
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        files.append(path)
        shown = shown_path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(shown, 0, key, f"cannot read this requirements file: {exc}"))
            continue
        children: list[Path] = []
        for number, line in logical_lines(text):
            include = include_of(line)
            if include is None:
                continue
            target = include[1]
            if "://" in target:
                message = f"{line}: remote requirements files are not supported"
                hint = f"download it next to {path.name} and include it by its path"
                problems.append(Problem(shown, number, key, message, hint))
                continue
            child = Path(target).expanduser()
            child = child if child.is_absolute() else path.parent / child
            if child.is_file():
                children.append(child)
            else:
                hint = f"looked for {child.name} in {child.parent}"
                problems.append(Problem(shown, number, key, f"{line}: file not found", hint))
        pending.extend(reversed(children))
    return tuple(files)
