"""Tasks the tests send by reference: workers import this module (tests/ is on their path).

It imports nothing a worker lacks: the standard library and envrunner (the worker-side face).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import envrunner


class TaskError(Exception):
    """A user-defined exception both sides can import."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


def identify() -> dict[str, Any]:
    import six

    return {
        "env": envrunner.current_environment(),
        "python": list(sys.version_info[:3]),
        "six": six.__version__,
        "pid": os.getpid(),
        "executable": sys.executable,
    }


def whoami() -> dict[str, Any]:
    return {"env": envrunner.current_environment(), "pid": os.getpid()}


def prefix() -> str:
    return sys.prefix


def echo(*args: Any, **kwargs: Any) -> Any:
    return args, kwargs


def add(a: int, b: int = 0) -> int:
    return a + b


def numpy_version() -> str:
    import numpy

    return str(numpy.__version__)


def array_stats(array: Any) -> dict[str, Any]:
    import numpy

    return {
        "numpy": numpy.__version__,
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "sum": float(array.sum()),
        "writeable": bool(array.flags.writeable),
    }


def make_array(n: int) -> Any:
    import numpy

    return numpy.arange(n, dtype=numpy.float64).reshape(-1, 2)


def fail_builtin(message: str) -> None:
    raise ValueError(message)


def fail_custom(message: str, code: int) -> None:
    raise TaskError(message, code)


def fail_unimportable() -> None:
    """Raise an exception whose type exists only in the worker."""
    import types

    module = types.ModuleType("only_in_worker")
    exec("class Boom(Exception):\n    pass\n", module.__dict__)
    sys.modules["only_in_worker"] = module
    raise module.Boom("kaboom")


def shout(lines: list[str], stream: str = "out") -> int:
    target = sys.stdout if stream == "out" else sys.stderr
    for line in lines:
        print(line, file=target)
    return len(lines)


def rendezvous(folder: str, me: str, other: str, timeout: float = 30.0) -> str:
    """Write my marker, wait for the other's: both only return if they ran at the same time."""
    Path(folder, me).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not Path(folder, other).exists():
        if time.monotonic() > deadline:
            return "alone"
        time.sleep(0.01)
    return "together"


def environment_variable(name: str) -> str | None:
    return os.environ.get(name)


def can_import(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def envrunner_face() -> dict[str, Any]:
    """What `import envrunner` gives inside a worker."""
    return {
        "file": envrunner.__file__,
        "has_runner": hasattr(envrunner, "Runner"),
        "caller_modules": sorted(
            name for name in sys.modules if name in ("envrunner._runner", "envrunner._broker")
        ),
        "sys_path_head": sys.path[:3],
        "cwd": os.getcwd(),
    }


def exit_hard(code: int) -> None:
    os._exit(code)


def note(path: str) -> int:
    """Append this worker's pid to a file (one line per run), and return it."""
    with open(path, "a") as file:
        file.write(f"{os.getpid()}\n")
    return os.getpid()


def record(path: str, label: str, kept: Any = None) -> str:
    """Append a label to a file: the file's lines give the order calls ran in."""
    with open(path, "a") as file:
        file.write(label + "\n")
    return label


def note_then_exit(path: str, code: int) -> None:
    note(path)
    os._exit(code)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def unpicklable_result() -> Any:
    import threading

    return threading.Lock()


@envrunner.task(env="same")
def decorated_same(x: int) -> tuple[int, str | None]:
    return x * 2, envrunner.current_environment()


@envrunner.task(env="other")
def decorated_other(x: int) -> tuple[int, str | None]:
    return x * 3, envrunner.current_environment()


@envrunner.task(env="same")
def calls_other_env() -> Any:
    return decorated_other(1)


def loaded_top_level_modules() -> list[str]:
    return sorted({name.split(".")[0] for name in sys.modules})


def result_of_a_worker_only_class() -> Any:
    """Return an instance of a class whose module exists only in the worker."""
    import types

    module = types.ModuleType("only_in_worker")
    exec("class Thing:\n    pass\n", module.__dict__)
    sys.modules["only_in_worker"] = module
    return module.Thing()


class Model:
    """An object that cannot be pickled (it holds a lock): it can only be used in place."""

    def __init__(self, marker: str) -> None:
        import threading
        import weakref

        self.lock = threading.Lock()
        self.calls = 0
        weakref.finalize(self, Path(marker).touch)

    def __repr__(self) -> str:
        return f"Model(calls={self.calls})"


def make_model(marker: str) -> Model:
    return Model(marker)


def use_model(model: Model, n: int) -> tuple[int, int, int]:
    """Use the kept object in place: (its id, this worker's pid, calls so far)."""
    model.calls += n
    return id(model), os.getpid(), model.calls


def plain_list(n: int) -> list[int]:
    return list(range(n))


def describe_array(array: Any) -> dict[str, Any]:
    """What a worker sees of an array it received."""
    import numpy

    owner = array
    while True:
        inner = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)
        if inner is None:
            break
        owner = inner
    return {
        "numpy": numpy.__version__,
        "writeable": bool(array.flags.writeable),
        "shared": type(owner).__name__ == "mmap",
        "sum": float(array.sum()),
        "dtype": array.dtype.str,
    }


def scale_in_place(array: Any, factor: float) -> Any:
    array *= factor
    return array


def version_like() -> Any:
    """A str subclass from a module only the worker has, like torch.__version__."""
    import types

    module = types.ModuleType("only_in_worker_version")
    exec("class Version(str):\n    pass\n", module.__dict__)
    sys.modules["only_in_worker_version"] = module
    return module.Version("2.13.0+cpu")


def counted(path: str, value: Any) -> Any:
    """Append a line to a file (one per run) and return ``value``."""
    with open(path, "a") as file:
        file.write("ran\n")
    return value


def counted_array(path: str, n: int) -> Any:
    import numpy

    counted(path, None)
    return numpy.arange(n, dtype=numpy.float64)


def counted_failure(path: str, code: int) -> None:
    counted(path, None)
    raise TaskError("counted failure", code)


def square(x: int) -> int:
    return x * x


def square_or_fail(x: int, bad: int) -> int:
    if x == bad:
        raise TaskError(f"refused {x}", x)
    return x * x


def gate(path: str, timeout: float = 60.0) -> int:
    """Block until ``path`` exists (the test opens the gate), then return this worker's pid."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {path} never opened")
        time.sleep(0.01)
    return os.getpid()


_INITIALIZED: list[str] = []


def initialize(path: str, label: str) -> None:
    """An executor's initializer: note this worker's pid, remember the label."""
    note(path)
    _INITIALIZED.append(label)


def initialized() -> list[str]:
    return list(_INITIALIZED)


def total(values: Any, extra: int = 0) -> int:
    """The sum of numbers found in lists, tuples and dict values, plus ``extra``."""
    if isinstance(values, dict):
        values = list(values.values())
    if isinstance(values, (list, tuple)):
        return sum(total(v) for v in values) + extra
    return int(values) + extra


def gated_value(path: str, value: Any) -> Any:
    """Wait for the gate at ``path``, then return ``value``."""
    gate(path)
    return value


def module_of(value: Any) -> str:
    """The module of ``value``'s class, as this worker loaded it."""
    return type(value).__module__
