"""A function's identity: a digest of everything in the caller that decides what it computes.

May import: the standard library and ``envrunner._digest``.

The identity of a task's function is a set of named **parts**, each with its own digest, and
one digest over all of them (the part of a cache key that stands for the code)::

    python                     "3.11": bytecode differs between Python versions
    code mod.evaluate          the function's code (below) and its default values
    closure mod.evaluate:scale a closure value
    global mod.THRESHOLD       a global the function reads (plain data by value)
    code helpers.normalize     a function of the user's project it calls, followed recursively
    global helpers.EPS         ... and what that one reads

**Code** is the instruction stream as :mod:`dis` reads it (operation names and resolved
arguments; constants by their value digest, nested code objects - lambdas, comprehensions, inner
functions - recursively), plus the parameter names and flags. Left out, so that they do not
invalidate: the function's name and qualified name, its docstring, its line numbers and file
(moving a function, or editing a line above it, keeps its identity). Renaming a local variable
changes it.

**Globals** are found in the bytecode (``LOAD_GLOBAL``, and ``module.attribute`` right after
it). Their values count as follows: a function or class defined in the **user's project** (its
file is not under the standard library, a site-packages folder or the interpreter's prefix, and
is not envrunner's own) by its own identity, recursively, so that editing a helper in another
module invalidates; functions and classes of installed packages by their qualified name (their
version is in the environment's part of the key); modules by name (reading ``helpers.f`` counts
``helpers.f``); everything else by its value digest (:mod:`envrunner._digest`); a value that
cannot be digested (a lock, an open file) by its type name alone. Builtins are not parts.
Cycles (two helpers calling each other) are followed once.

Parts are kept with the cached result, so that a later miss can say which changed
(:func:`describe_changes`).
"""

from __future__ import annotations

import dis
import functools
import inspect
import os
import struct
import sys
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._digest import UnhashableValueError, digest_value, new_hash

__all__ = ["Identity", "describe_changes", "function_identity", "is_project_file"]

_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
#: Objects visited in one identity: id -> (the object, kept alive; its part name).
_Seen = dict[int, tuple[Any, str]]
_ENVRUNNER_DIR = os.path.dirname(os.path.realpath(__file__)) + os.sep


@dataclass(frozen=True)
class Identity:
    """What a function is, for the cache.

    Attributes:
        function: Its qualified name, ``module.qualname``.
        digest: One hex digest over all parts.
        parts: Each part's name and digest, as the module docstring lists them.
    """

    function: str
    digest: str
    parts: Mapping[str, str] = field(repr=False)


def function_identity(fn: Any) -> Identity:
    """The identity of ``fn`` (a plain function, or a wrapper with ``__wrapped__``).

    Raises:
        TypeError: ``fn`` is not a Python function.
    """
    target = fn
    while not isinstance(target, types.FunctionType) and hasattr(target, "__wrapped__"):
        target = target.__wrapped__  # a Task, a functools.partial-like wrapper object
    if not isinstance(target, types.FunctionType):
        raise TypeError(f"the cache needs a Python function, got {type(fn).__name__}")
    parts: dict[str, str] = {"python": _PYTHON}
    _visit(target, parts, {})
    h = new_hash()
    for name in sorted(parts):
        h.update(name.encode() + b"\0" + parts[name].encode() + b"\0")
    innermost = _unwrap(target)  # a decorated task is named as its user wrote it
    named = innermost if isinstance(innermost, types.FunctionType) else target
    return Identity(_qualified(named), h.hexdigest(), dict(sorted(parts.items())))


def describe_changes(old: Mapping[str, str], new: Mapping[str, str], function: str) -> list[str]:
    """What changed between two identities' parts, in words, most telling first.

    ``function`` is the task's qualified name: its own code reads "its code changed", the
    others' "helper normalize() changed".
    """
    said: list[str] = []
    for name in sorted(set(old) | set(new), key=lambda n: (_rank(n, function), n)):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        kind, _, subject = name.partition(" ")
        if kind == "python":
            said.append(f"Python {before} -> {after}")
        elif kind == "code":
            short = _short(subject)
            if subject == function:
                said.append("its code changed")
            elif before is None:
                said.append(f"now calls {short}()")
            elif after is None:
                said.append(f"no longer calls {short}()")
            else:
                said.append(f"helper {short}() changed")
        elif kind == "closure":
            owner, _, var = subject.rpartition(":")
            where = "" if owner == function else f" of {_short(owner)}()"
            said.append(f"closure value {var}{where} changed")
        else:
            short = subject.rpartition(".")[2]
            if before is None:
                said.append(f"now reads global {short}")
            elif after is None:
                said.append(f"no longer reads global {short}")
            else:
                said.append(f"global {short} changed")
    return said


def is_project_file(filename: str | None) -> bool:
    """Whether code from ``filename`` is the user's own (followed) rather than installed."""
    if not filename or filename.startswith("<"):
        return True  # typed in, exec'd or generated: only its code says what it is
    return _is_project_path(os.path.realpath(filename))


# --------------------------------------------------------------------------- parts


def _visit(fn: types.FunctionType, parts: dict[str, str], seen: _Seen) -> str:
    known = seen.get(id(fn))
    if known is not None:
        return known[1]
    name = _unique(_code_name(fn), seen)
    seen[id(fn)] = (fn, name)
    code = fn.__code__
    h = new_hash()
    h.update(bytes.fromhex(_code_digest(code)))
    h.update(bytes.fromhex(_data_digest(fn.__defaults__, f"defaults of {name}")))
    h.update(bytes.fromhex(_data_digest(fn.__kwdefaults__, f"defaults of {name}")))
    parts[f"code {name}"] = h.hexdigest()
    for var, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        try:
            value = cell.cell_contents
        except ValueError:  # not yet assigned (a recursive inner function)
            value = None
        parts[f"closure {name}:{var}"] = _value_part(value, parts, seen, f"closure {var}")
    namespace = fn.__globals__
    module = fn.__module__
    for global_name, attribute in _global_reads(code):
        if global_name not in namespace:
            continue  # a builtin, or a name not defined yet
        value = namespace[global_name]
        if isinstance(value, types.ModuleType):
            if attribute is not None and _is_project_module(value):
                inner = getattr(value, attribute, None)
                part = f"global {value.__name__}.{attribute}"
                parts[part] = _value_part(inner, parts, seen, part)
            parts[f"global {module}.{global_name}"] = f"module {value.__name__}"
            continue
        part = f"global {module}.{global_name}"
        parts[part] = _value_part(value, parts, seen, part)
    return name


def _value_part(value: Any, parts: dict[str, str], seen: _Seen, where: str) -> str:
    # A function is visited as it is: a decorator's wrapper holds the wrapped one in its closure.
    target = value if isinstance(value, types.FunctionType) else _unwrap(value)
    if isinstance(target, types.MethodType):
        target = target.__func__
    if isinstance(target, types.FunctionType):
        if is_project_file(target.__code__.co_filename):
            return "function " + _visit(target, parts, seen)
        return "ref " + _qualified(target)
    if isinstance(target, type):
        return _class_part(target, parts, seen)
    if isinstance(target, types.ModuleType):
        return f"module {target.__name__}"
    if isinstance(target, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        return f"ref {getattr(target, '__module__', None)}.{target.__qualname__}"
    try:
        return digest_value(target, where)
    except UnhashableValueError:
        kind = type(target)
        return f"opaque {kind.__module__}.{kind.__qualname__}"


def _class_part(cls: type, parts: dict[str, str], seen: _Seen) -> str:
    name = f"{cls.__module__}.{cls.__qualname__}"
    filename = _class_file(cls)
    if filename is None or not is_project_file(filename):
        return "ref " + name
    known = seen.get(id(cls))
    if known is not None:
        return "class " + known[1]
    name = _unique(name, seen)
    seen[id(cls)] = (cls, name)
    h = new_hash()
    for attribute, value in sorted(vars(cls).items()):
        if attribute in ("__dict__", "__weakref__", "__doc__", "__module__", "__qualname__"):
            continue
        inner = value
        if isinstance(value, (staticmethod, classmethod)):
            inner = value.__func__
        elif isinstance(value, property):
            inner = (value.fget, value.fset, value.fdel)
        items = inner if isinstance(inner, tuple) else (inner,)
        for item in items:
            h.update(attribute.encode() + b"\0")
            h.update(_value_part(item, parts, seen, f"{name}.{attribute}").encode())
    parts[f"code {name}"] = h.hexdigest()
    return "class " + name


def _class_file(cls: type) -> str | None:
    """Where a class is defined: its methods' file, else its module's (None: not known)."""
    for value in vars(cls).values():
        inner = value
        if isinstance(value, (staticmethod, classmethod)):
            inner = value.__func__
        elif isinstance(value, property):
            inner = value.fget
        if isinstance(inner, types.FunctionType):
            return inner.__code__.co_filename
    module = sys.modules.get(cls.__module__)
    return getattr(module, "__file__", None)


def _unique(name: str, seen: _Seen) -> str:
    """``name``, or ``name#2`` ... when another object (a second closure of one inner function,
    a second wrapper of one decorator) already has it: numbered in the order they are read."""
    taken = {given for _, given in seen.values()}
    if name not in taken:
        return name
    number = 2
    while f"{name}#{number}" in taken:
        number += 1
    return f"{name}#{number}"


def _data_digest(value: Any, where: str) -> str:
    try:
        return digest_value(value, where)
    except UnhashableValueError:
        return digest_value(f"opaque {type(value).__qualname__}")


# --------------------------------------------------------------------------- bytecode


@functools.lru_cache(maxsize=4096)
def _code_digest(code: types.CodeType) -> str:
    h = new_hash()
    nargs = code.co_argcount + code.co_kwonlyargcount
    nargs += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    header = (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)
    h.update(struct.pack("<4q", *header))
    h.update(repr(code.co_varnames[:nargs]).encode())
    for instruction in dis.get_instructions(code):
        h.update(instruction.opname.encode() + b"\0")
        value = instruction.argval
        if isinstance(value, types.CodeType):
            h.update(b"code:" + _code_digest(value).encode())
        elif value is None or isinstance(value, (int, str)):
            h.update(repr(value).encode())
        else:  # a constant: frozensets' repr order changes between runs, their digest does not
            h.update(_data_digest(value, "a constant").encode())
        h.update(b"\0")
    return str(h.hexdigest())


@functools.lru_cache(maxsize=4096)
def _global_reads(code: types.CodeType) -> tuple[tuple[str, str | None], ...]:
    """The globals ``code`` (and the code nested in it) reads, each with the attribute read."""
    found: dict[tuple[str, str | None], None] = {}
    for nested in _codes(code):
        previous: str | None = None
        for instruction in dis.get_instructions(nested):
            op = instruction.opname
            if previous is not None:
                attribute = instruction.argval if op in ("LOAD_ATTR", "LOAD_METHOD") else None
                found[(previous, attribute if isinstance(attribute, str) else None)] = None
                previous = None
            if op in ("LOAD_GLOBAL", "LOAD_NAME"):
                previous = str(instruction.argval)
        if previous is not None:
            found[(previous, None)] = None
    return tuple(found)


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


# --------------------------------------------------------------------------- names and places


def _unwrap(value: Any) -> Any:
    seen = 0
    while hasattr(value, "__wrapped__") and seen < 20:
        try:
            value = value.__wrapped__
        except Exception:
            break
        seen += 1
    return value


def _qualified(fn: Any) -> str:
    return f"{getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', fn.__name__)}"


def _code_name(fn: types.FunctionType) -> str:
    """Where the code was written, ``module.qualname``: a wrapper made by ``functools.wraps``
    carries the wrapped one's names, its code does not."""
    module = fn.__globals__.get("__name__", fn.__module__)
    return f"{module}.{getattr(fn.__code__, 'co_qualname', fn.__qualname__)}"


def _short(qualified: str) -> str:
    """``pkg.helpers.normalize`` -> ``normalize``; ``mod.Model.fit`` -> ``Model.fit``;
    ``mod.make.<locals>.scale`` -> ``make.scale``."""
    if ".<locals>." in qualified:
        head, _, rest = qualified.partition(".<locals>.")
        return head.rpartition(".")[2] + "." + rest.replace(".<locals>.", ".")
    pieces = qualified.split(".")
    if len(pieces) >= 2 and pieces[-2][:1].isupper():
        return ".".join(pieces[-2:])
    return pieces[-1]


def _rank(part: str, function: str) -> int:
    if part == "python":
        return 0
    if part == f"code {function}":
        return 1
    return 2 if part.startswith("code ") else 3


def _is_project_module(module: types.ModuleType) -> bool:
    filename = getattr(module, "__file__", None)
    return bool(filename) and is_project_file(filename)


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    import site
    import sysconfig

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    paths = sysconfig.get_paths()
    roots.update(paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib"))
    try:
        roots.update(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except AttributeError:  # an old virtualenv's site module
        pass
    return tuple(sorted({os.path.realpath(r) + os.sep for r in roots if r}))


@functools.lru_cache(maxsize=8192)
def _is_project_path(path: str) -> bool:
    if path.startswith(_ENVRUNNER_DIR):
        return False
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not any(path.startswith(root) for root in _installed_roots())
