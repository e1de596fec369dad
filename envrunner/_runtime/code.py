"""Functions between environments: by reference, by value, or by source.

A function travels one of four ways (the first that applies):

``ref``     ``[ "ref", module, qualname ]`` for a function its worker can import: defined at the
            top level of a module other than ``__main__``. The worker imports the module.
``pickle``  ``[ "pickle", bytes ]`` for other callables that plain pickle sends by reference
            (``functools.partial`` of importable functions, builtins, ufuncs).
``value``   ``[ "value", bytes ]`` cloudpickle, for ``__main__`` functions, closures and lambdas,
            only when the worker runs the caller's Python minor version: by-value code from
            another version crashes the reader.
``source``  ``[ "source", name, entries, data, buffers ]`` for ``__main__`` functions bound for
            another Python version: the ``def`` (and the ``__main__`` functions and classes it
            uses) re-executed in the worker, with the modules it uses imported there and the
            plain data it reads from globals sent along. A closure over local variables cannot
            stand alone and is refused with a message saying what to change.

This module is part of the sealed worker runtime.
"""

from __future__ import annotations

import ast
import dis
import functools
import linecache
import pickle
import sys
import textwrap
import threading
import types
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import msgpack

from .codec import Decoder, Encoder, type_name
from .errors import DecodeError, EncodeError

__all__ = ["describe", "encode_function", "load_function", "unwrap"]

_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL"})


def unwrap(obj: Any) -> Any:
    """The plain function behind an envrunner task (either side), else ``obj`` itself."""
    return getattr(obj, "__envrunner_fn__", obj)


def describe(fn: Any) -> str:
    """A short name for messages: ``module.qualname``."""
    fn = unwrap(fn)
    if isinstance(fn, functools.partial):
        return f"functools.partial({describe(fn.func)}, ...)"
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{name}" if module and module != "builtins" else name


# --------------------------------------------------------------------------- caller side


def encode_function(
    fn: Any, same_python: bool, target: str = "", by_reference: bool = True
) -> bytes:
    """Encode a callable for a worker.

    Args:
        fn: The function (or an envrunner task, or any callable).
        same_python: Whether the worker runs the caller's Python minor version.
        target: What the worker is, for messages (``"environment 'legacy' (Python 3.9)"``).
        by_reference: Send importable functions by reference. False sends a module's function
            (and what it uses from its own module) by value or source, for a module the worker
            cannot import, such as a test module that imports pytest.

    Raises:
        EncodeError: The function cannot travel; the message says what to change.
    """
    fn = unwrap(fn)
    reference = _reference(fn)
    if reference is not None and (by_reference or not isinstance(fn, types.FunctionType)):
        return _packb(["ref", reference[0], reference[1]])
    if not isinstance(fn, types.FunctionType):
        from .byname import ScriptObjectError, dumps

        try:  # by name; what names __main__ (a partial of a script function, a bound method
            return _packb(["pickle", dumps(fn, protocol=5)])  # of a script object) goes by value
        except ScriptObjectError as exc:
            if not same_python:
                raise EncodeError(
                    f"{describe(fn)} ({type_name(fn)}) cannot be sent to {target}: {exc}",
                    what=describe(fn),
                ) from None
        except Exception as exc:
            if not same_python:
                raise EncodeError(
                    f"{describe(fn)} ({type_name(fn)}) cannot be sent to {target}: {exc}",
                    what=describe(fn),
                ) from exc
    if same_python:
        import cloudpickle

        try:
            if reference is not None:
                data = _dumps_module_by_value(fn)
            else:
                data = cloudpickle.dumps(fn, protocol=5)
        except Exception as exc:
            raise EncodeError(
                f"{describe(fn)} cannot be sent by value: {type(exc).__name__}: {exc}",
                what=describe(fn),
            ) from exc
        return _packb(["value", data])
    return _SourceBundle(fn, target).encode()


_BY_VALUE_LOCK = threading.Lock()


def _dumps_module_by_value(fn: types.FunctionType) -> bytes:
    """cloudpickle a module's function by value, with what it uses from that module."""
    import cloudpickle

    module = sys.modules[fn.__module__]
    with _BY_VALUE_LOCK:
        cloudpickle.register_pickle_by_value(module)
        try:
            return cloudpickle.dumps(fn, protocol=5)  # type: ignore[no-any-return]
        finally:
            cloudpickle.unregister_pickle_by_value(module)


def _packb(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _reference(fn: Any) -> Optional[Tuple[str, str]]:
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return None
    if module_name == "__main__" or "<locals>" in qualname or "<lambda>" in qualname:
        return None
    if not isinstance(fn, (types.FunctionType, types.BuiltinFunctionType)):
        return None
    module = sys.modules.get(module_name)
    if module is None:
        return None
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not fn and unwrap(found) is not fn:
        return None
    return module_name, qualname


class _SourceBundle:
    """The source of a ``__main__`` function and of what it uses, for another Python version.

    What the function uses from its own module (``__main__``, or the module of a function sent
    with ``by_reference=False``) goes as source too; from other modules, by reference.
    """

    def __init__(self, fn: types.FunctionType, target: str) -> None:
        self.fn = fn
        self.home = fn.__module__
        self.target = target or "a worker on another Python version"
        # ["def", name, source, filename, first line] | ["module", name, module]
        # | ["attr", name, module, qualname] | ["task", name, env]
        self.entries: List[List[Any]] = []
        self.data: Dict[str, Any] = {}
        self.seen: Set[str] = set()

    def encode(self) -> bytes:
        fn = self.fn
        if fn.__closure__:
            free = fn.__code__.co_freevars
            names = ", ".join(repr(name) for name in free)
            noun, passed = (
                ("variable", "an argument") if len(free) == 1 else ("variables", "arguments")
            )
            raise EncodeError(
                f"{describe(fn)} cannot be sent to {self.target}: it is a closure over the "
                f"local {noun} {names} of the function that defines it, and a worker on "
                "another Python version gets functions as source code. Define it at the top "
                f"level of your script and pass {names} as {passed}.",
                what=describe(fn),
            )
        name = self._add_definition(fn, fn.__name__)
        body, buffers = Encoder(by_value=False).encode(self.data)
        return _packb(["source", name, self.entries, body, [bytes(memoryview(b)) for b in buffers]])

    def _add_definition(self, obj: Any, name: str) -> str:
        filename, source, start = _definition_source(obj, self.target, _namespace(obj))
        if obj.__name__ == "<lambda>":
            name = f"__envrunner_lambda_{len(self.entries)}__"
            source = f"{name} = {source}"
        self.seen.add(name)
        code = compile("\n" * (start - 1) + source, filename, "exec")
        for global_name in sorted(_global_names(code)):
            self._add_global(global_name, obj)
        self.entries.append(["def", name, source, filename, start])
        return name

    def _add_global(self, name: str, owner: Any) -> None:
        if name in self.seen:
            return
        namespace = _namespace(owner)
        if name not in namespace:
            return  # a builtin, or a name that is only assigned inside
        self.seen.add(name)
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            self.entries.append(["module", name, value.__name__])
            return
        public = _envrunner_public_name(value)
        if public is not None:
            self.entries.append(["attr", name, "envrunner", public])
            return
        plain = unwrap(value)
        if getattr(plain, "__module__", None) == self.home and isinstance(
            plain, (types.FunctionType, type)
        ):
            self.seen.discard(name)
            self._add_definition(value if isinstance(value, type) else plain, name)
            if plain is not value and isinstance(getattr(value, "env", None), str):
                self.entries.append(["task", name, value.env])  # a task of __main__: keep its env
            return
        reference = _reference(plain) if callable(plain) else None
        if reference is not None or (
            isinstance(plain, type) and plain.__module__ not in ("__main__", "builtins")
        ):
            module, qualname = reference or (plain.__module__, plain.__qualname__)
            self.entries.append(["attr", name, module, qualname])
            return
        try:
            Encoder(by_value=False).encode(value)
        except EncodeError as exc:
            raise EncodeError(
                f"{describe(self.fn)} uses the global {name!r} (a {type_name(value)}), which "
                f"cannot be sent to {self.target}: {exc}. Create it inside the function, or "
                "keep it in a module the environment can import.",
                what=name,
            ) from exc
        self.data[name] = value


def _namespace(obj: Any) -> Dict[str, Any]:
    """The globals a function or class was defined in."""
    if hasattr(obj, "__globals__"):
        return obj.__globals__  # type: ignore[no-any-return]
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    return vars(module) if module is not None else {}


#: Packages whose decorators only annotate a function (envrunner's tasks, pytest's marks):
#: dropped from source sent to a worker, where they may not even be installed.
_ANNOTATING_PACKAGES = ("envrunner", "pytest", "_pytest")


def _is_envrunner_decorator(node: ast.expr, namespace: Dict[str, Any]) -> bool:
    """Whether a decorator only annotates (``@envrunner.task(...)``, ``@pytest.mark.x``)."""
    root = node.func if isinstance(node, ast.Call) else node
    while isinstance(root, ast.Attribute):
        root = root.value
    if not isinstance(root, ast.Name):
        return False
    value = namespace.get(root.id)
    module = value.__name__ if isinstance(value, types.ModuleType) else None
    module = module or getattr(value, "__module__", None) or ""
    return module.split(".")[0] in _ANNOTATING_PACKAGES


def _envrunner_public_name(value: Any) -> Optional[str]:
    module = getattr(value, "__module__", "") or ""
    if not module.startswith("envrunner"):
        return None
    package = sys.modules.get("envrunner")
    for attr in ("__name__", "__qualname__"):
        name = getattr(value, attr, None)
        if isinstance(name, str) and getattr(package, name, None) is value:
            return name
    return None


def _definition_source(obj: Any, target: str, namespace: Dict[str, Any]) -> Tuple[str, str, int]:
    """``(filename, dedented source, first line)`` of a function's or class's definition.

    envrunner's own decorators are blanked out: they say where the function runs, which the
    worker already knows, and their arguments may not evaluate there.
    """
    if isinstance(obj, type):
        module = sys.modules.get(obj.__module__)
        filename = getattr(module, "__file__", None) or ""
        lineno = 0
        module_globals = vars(module) if module is not None else None
    else:
        filename = obj.__code__.co_filename
        lineno = obj.__code__.co_firstlineno
        module_globals = obj.__globals__
    lines = linecache.getlines(filename, module_globals) if filename else []
    if not lines:
        raise EncodeError(
            f"{describe(obj)} cannot be sent to {target}: its source code cannot be read "
            f"(defined in {filename or 'an interactive session'}); a worker on another Python "
            "version gets functions as source code. Define it in a file (a script or a module).",
            what=describe(obj),
        )
    text = "".join(lines)
    candidates = _find_nodes(ast.parse(text, filename), obj, lineno)
    if obj.__name__ == "<lambda>" and len(candidates) > 1:
        raise EncodeError(
            f"{describe(obj)} cannot be sent to {target}: line {lineno} of {filename} holds "
            f"{len(candidates)} lambdas, and a worker on another Python version gets functions "
            "as source code, which cannot tell them apart. Put each lambda on a line of its "
            "own, or define the function with def.",
            what=describe(obj),
        )
    node = candidates[-1] if candidates else None
    if node is None:
        raise EncodeError(
            f"cannot find the definition of {describe(obj)} in {filename} to send it to "
            f"{target}; define it at the top level of the file",
            what=describe(obj),
        )
    if isinstance(node, ast.Lambda):
        segment = ast.get_source_segment(text, node) or ""
        return filename, segment, node.lineno
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    end = node.end_lineno or node.lineno
    chosen = lines[start - 1 : end]
    for decorator in node.decorator_list:
        if _is_envrunner_decorator(decorator, namespace):
            for line in range(decorator.lineno, (decorator.end_lineno or decorator.lineno) + 1):
                chosen[line - start] = "\n"
    return filename, textwrap.dedent("".join(chosen)), start


_Definition = Union[ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda]


def _find_nodes(tree: ast.AST, obj: Any, lineno: int) -> List[_Definition]:
    name = obj.__name__
    candidates: List[_Definition] = []
    for node in ast.walk(tree):
        if name == "<lambda>" and isinstance(node, ast.Lambda) and node.lineno == lineno:
            candidates.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name != name:
                continue
            if isinstance(node, ast.ClassDef):
                candidates.append(node)
                continue
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if lineno in (first, node.lineno):
                candidates.append(node)
    return candidates


def _global_names(code: types.CodeType) -> Set[str]:
    names: Set[str] = set()
    for instruction in dis.get_instructions(code):
        if instruction.opname in _GLOBAL_OPS and isinstance(instruction.argval, str):
            names.add(instruction.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


# --------------------------------------------------------------------------- worker side


def load_function(spec: bytes, env: str = "") -> Callable[..., Any]:
    """Rebuild a function encoded by :func:`encode_function`.

    Raises:
        DecodeError: Its module cannot be imported here, or its code cannot be loaded.
    """
    where = f"environment {env!r}" if env else "the worker"
    kind, *rest = msgpack.unpackb(spec, raw=False)
    if kind == "ref":
        module_name, qualname = rest
        return unwrap(_import_attr(module_name, qualname, where))  # type: ignore[no-any-return]
    if kind in ("pickle", "value"):
        try:
            if kind == "value":
                import cloudpickle  # noqa: F401 - registers what by-value pickles need

            return unwrap(pickle.loads(rest[0]))  # type: ignore[no-any-return]
        except ModuleNotFoundError as exc:
            raise DecodeError(
                f"cannot load the function in {where}: module {exc.name!r} is not installed there",
                module=exc.name or "",
            ) from exc
    if kind == "source":
        name, entries, body, buffers = rest
        return unwrap(_exec_source(name, entries, body, buffers, where))  # type: ignore[no-any-return]
    raise DecodeError(f"unknown function encoding {kind!r} in {where}")


def _import_attr(module_name: str, qualname: str, where: str) -> Any:
    import importlib

    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module_name
        detail = f"{type(exc).__name__}: {exc}"
        raise DecodeError(
            f"cannot import module {module_name!r} in {where} ({detail}). Functions from "
            "modules travel by reference: the worker imports their module, so that module and "
            "everything it imports at the top must be importable there. Install what is "
            "missing in the environment, or move the function to a module that imports only "
            "what the environment has.",
            module=missing,
        ) from exc
    for part in qualname.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise DecodeError(
                f"module {module_name!r} in {where} has no attribute {qualname!r}: the worker "
                "imported a different version of it than the caller has"
            ) from None
    return found


def _exec_source(
    name: str, entries: List[List[Any]], body: bytes, buffers: List[bytes], where: str
) -> Any:
    namespace: Dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    namespace.update(Decoder(where=where).decode(body, buffers))
    for entry in entries:
        kind = entry[0]
        if kind == "module":
            import importlib

            try:
                namespace[entry[1]] = importlib.import_module(entry[2])
            except ImportError as exc:
                raise DecodeError(
                    f"the function needs module {entry[2]!r}, which cannot be imported in "
                    f"{where}: {exc}",
                    module=entry[2],
                ) from exc
        elif kind == "attr":
            namespace[entry[1]] = _import_attr(entry[2], entry[3], where)
    for entry in entries:
        if entry[0] == "def":
            _, _def_name, source, filename, start = entry
            exec(compile("\n" * (start - 1) + source, filename, "exec"), namespace)
    for entry in entries:
        if entry[0] == "task":
            import envrunner

            namespace[entry[1]] = envrunner.task(env=entry[2])(namespace[entry[1]])
    return namespace[name]
