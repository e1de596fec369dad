"""The package's layers: each module imports only what its docstring's "May import:" allows,
and no two modules import each other, even through others or only for type checking.

Every import counts: at the top, inside functions (heavy parts load on first use) and under
``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "envrunner"
THIRD_PARTY = {
    "blake3",
    "uv",
    "cloudpickle",
    "filelock",
    "joblib",
    "msgpack",
    "numpy",
    "packaging",
    "platformdirs",
    "pytest",
    "virtualenv",
    "yaml",
    "zmq",
}
#: The package's face and entry points: they may import anything of the package (lazily).
UNCHECKED = {"__init__", "__main__", "worker"}


def modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in UNCHECKED)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (``envrunner.X`` for the package's own), anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = "envrunner" + (f".{node.module}" if node.module else "")
                if node.module:
                    found.add(base)
                else:  # from . import _home
                    found.update(f"envrunner.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
    return found


def allowed_by(name: str) -> tuple[set[str], bool]:
    """What a module's "May import:" line names: modules (prefixes), and whether it may import
    every caller-side module."""
    doc = ast.get_docstring(ast.parse((PACKAGE / f"{name}.py").read_text())) or ""
    match = re.search(r"May import:(.*?)(?:\n\n|$)", doc, re.S)
    assert match, f"envrunner/{name}.py has no 'May import:' line in its docstring"
    text = " ".join(match.group(1).split())
    allowed = {word for word in THIRD_PARTY if re.search(rf"\b{word}\b", text)}
    for token in re.findall(r"``([\w.]+)``", text):
        allowed.add(f"envrunner.{token}" if token.startswith("_") else token)
    everything = "caller-side ``envrunner`` modules" in text
    return allowed, everything


def is_allowed(module: str, allowed: set[str], everything: bool, name: str) -> bool:
    root = module.split(".", maxsplit=1)[0]
    if root in sys.stdlib_module_names or module == "__future__":
        return True
    if everything and root == "envrunner":
        return module != "envrunner._cli" or name == "_cli"
    return any(module == a or module.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("name", modules())
def test_a_module_imports_only_what_its_docstring_allows(name: str) -> None:
    allowed, everything = allowed_by(name)
    found = imports_of(PACKAGE / f"{name}.py")
    extra = {m for m in found if not is_allowed(m, allowed, everything, name)}
    assert not extra, f"envrunner/{name}.py imports {sorted(extra)}, beyond its May import line"


@pytest.mark.parametrize("name", modules())
def test_a_module_imports_everything_its_docstring_names(name: str) -> None:
    """A "May import:" line that names a module the code does not import is stale: it hides
    what the module really leans on (a name after "never" is a prohibition, not a claim)."""
    allowed, _ = allowed_by(name)
    doc = ast.get_docstring(ast.parse((PACKAGE / f"{name}.py").read_text())) or ""
    line = " ".join(re.search(r"May import:(.*?)(?:\n\n|$)", doc, re.S).group(1).split())  # type: ignore[union-attr]
    forbidden = {
        f"envrunner.{t}" if t.startswith("_") else t
        for t in re.findall(r"never ``([\w.]+)``", line)
    }
    found = imports_of(PACKAGE / f"{name}.py")
    stale = {
        claim
        for claim in allowed - forbidden
        if not any(m == claim or m.startswith(claim + ".") for m in found)
        and not (claim in THIRD_PARTY and any(m.split(".")[0] == claim for m in found))
    }
    assert not stale, f"envrunner/{name}.py's May import line names {sorted(stale)}, unused"


def test_no_module_imports_another_that_imports_it_back() -> None:
    graph: dict[str, set[str]] = {}
    for name in modules():
        targets = set()
        for module in imports_of(PACKAGE / f"{name}.py"):
            parts = module.split(".")
            if parts[0] == "envrunner" and len(parts) > 1 and parts[1] not in UNCHECKED:
                targets.add(parts[1])
        graph[name] = targets - {name}
    # Tarjan's strongly connected components: a component of two or more is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


#: Past this many lines a module is split by concept (STYLE.md: about 500).
MOST_LINES = 500
#: Modules allowed past it, at most at this size, each with its reason: none may grow, and one
#: split under the limit leaves this list.
LARGER: dict[str, int] = {}


def test_no_module_is_a_giant() -> None:
    """Split by concept past about 500 lines (STYLE.md); the sealed runtime counts too."""
    sizes = {
        p.relative_to(PACKAGE.parent).as_posix(): len(p.read_text().splitlines())
        for p in sorted(PACKAGE.rglob("*.py"))
    }
    giants = {path: n for path, n in sizes.items() if n > LARGER.get(path, MOST_LINES)}
    assert not giants, f"over {MOST_LINES} lines, or grown past LARGER: {giants}"
    split = sorted(path for path in LARGER if sizes.get(path, 0) <= MOST_LINES)
    assert not split, f"{split} no longer over {MOST_LINES} lines: remove them from LARGER"
