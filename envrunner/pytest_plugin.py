"""The pytest plugin: run a test's body inside an environment of the manifest.

::

    @pytest.mark.envrunner("legacy", "modern")     # or "*": every environment
    def test_sum(tmp_path, numbers):               # fixtures are computed here, sent as arguments
        import numpy as np                         # what the environment has
        assert np.sum(numbers) == 6, "numpy lost count"

Installing envrunner enables it (entry point ``pytest11``); importing it is cheap: yaml, zmq
and the broker load only when a marked test is collected or run.

::

    collection   one test case per environment the marker names ("*": all), ids [legacy] ...
    setup        build or reuse the environment: a failure is the test's ERROR, naming it
                 (the session remembers it: the next tests of that environment fail at once)
    call         fixtures (computed here by pytest, as usual) and the test function go to a
                 worker; the function travels as source (_runtime/pytest_body.py says why),
                 so the test module, which imports pytest, is not imported there
                 an exception from the worker is re-raised here with frames rebuilt from the
                 worker's traceback: pytest shows its source, message and location as it
                 shows a local test's (assertions are not rewritten: the message, and the
                 failing ``assert`` line for a bare one, is what crosses)
    session end  the session's one Runner shuts its workers down

May import: the standard library and pytest at import time; caller-side ``envrunner`` modules
inside hooks.
"""

from __future__ import annotations

import ast
import functools
import inspect
import linecache
import re
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._manifest import Manifest
    from ._runner import Runner

__all__ = ["ENV_PARAMETER", "MARKER"]

MARKER = "envrunner"
#: The parameter that names a test case's environment (``item.callspec.params``).
ENV_PARAMETER = "envrunner_env"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("envrunner", "envrunner: tests that run inside environments")
    group.addoption(
        "--envrunner-manifest",
        metavar="PATH",
        default=None,
        help="the envrunner manifest for @pytest.mark.envrunner tests "
        "(default: $ENVRUNNER_MANIFEST, else environments.yaml here or above)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*names): run the test's body in a worker of each named environment of the "
        "envrunner manifest ('*': every one); fixtures are sent to it as arguments",
    )
    state = _Session(config)
    config.stash[_STATE] = state
    config.add_cleanup(state.close)


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is not None:
        state.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One test case per environment the marker names."""
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None:
        return
    names = metafunc.config.stash[_STATE].names_for_collection(marker.args)
    metafunc.fixturenames.append(ENV_PARAMETER)
    metafunc.parametrize(ENV_PARAMETER, names, ids=names)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Build (or find) the test's environment before its fixtures are set up."""
    env = environment_of(item)
    if env is not None:
        item.config.stash[_STATE].prepare(env, item)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run the test function in a worker of its environment."""
    env = environment_of(pyfuncitem)
    if env is None:
        return None
    from ._runtime.errors import EncodeError
    from ._runtime.pytest_body import run_test

    state: _Session = pyfuncitem.config.stash[_STATE]
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    problem = ""
    try:
        body = state.body(pyfuncitem.obj, env)
        future = state.runner().submit(env, run_test, body, env, **arguments)
    except EncodeError as exc:
        problem = _unsendable(exc, pyfuncitem, env, arguments)
    if problem:
        pytest.fail(problem, pytrace=False)  # outside the except: no chain of encoder errors
    error = future.exception()
    if error is not None:
        raise _as_local(error, pyfuncitem.name)
    return True


def environment_of(item: pytest.Item) -> str | None:
    """The environment a test case runs in, or None for a test that runs here."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or ENV_PARAMETER not in callspec.params:
        return None
    return str(callspec.params[ENV_PARAMETER])


# --------------------------------------------------------------------------- session state


class _Session:
    """What one pytest session shares: the manifest, one Runner, the builds that failed."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._manifest: Manifest | None = None
        self._runner: Runner | None = None
        self.ready: set[str] = set()
        self.failures: dict[str, str] = {}
        self._bodies: dict[tuple[Any, str], bytes] = {}

    def manifest(self) -> Manifest:
        if self._manifest is None:
            from ._manifest import find_manifest, load_manifest

            explicit = self.config.getoption("envrunner_manifest")
            self._manifest = load_manifest(find_manifest(explicit))
        return self._manifest

    def runner(self) -> Runner:
        if self._runner is None:
            from ._runner import Runner

            self._runner = Runner(self.manifest(), progress=None)
        return self._runner

    def body(self, function: Any, env: str) -> bytes:
        """The test function encoded as source, whatever Python ``env`` runs (see
        ``_runtime/pytest_body.py`` for why never by value)."""
        key = (function, env)
        if key not in self._bodies:
            from ._runtime.code import encode_function

            target = f"environment {env!r}"
            self._bodies[key] = encode_function(function, False, target, by_reference=False)
        return self._bodies[key]

    def names_for_collection(self, args: Sequence[Any]) -> list[str]:
        """The environments a marker names; as written when the manifest cannot say more.

        Collection never fails here: a missing manifest or an unknown name becomes an error of
        the test cases concerned, in their setup.
        """
        from ._runtime.errors import EnvrunnerError

        written = [str(arg) for arg in _flatten(args)]
        try:
            known = list(self.manifest().environments)
        except EnvrunnerError:
            return written or ["?"]
        if not written:
            return known[:1] if len(known) == 1 else ["?"]
        names: list[str] = []
        for name in written:
            for one in known if name == "*" else [name]:
                if one not in names:
                    names.append(one)
        return names

    def prepare(self, env: str, item: pytest.Item) -> None:
        """Make ``env`` ready for ``item``, or fail its setup saying why."""
        refusal = _refusal(item)
        if refusal:
            pytest.fail(refusal, pytrace=False)
        if env not in self.ready and env not in self.failures:
            problem = self._prepare(env, item)
            if problem:
                self.failures[env] = problem  # the next tests of env fail at once
            else:
                self.ready.add(env)
        if env in self.failures:
            pytest.fail(self.failures[env], pytrace=False)

    def _prepare(self, env: str, item: pytest.Item) -> str:
        """Build or find ``env``; returns what went wrong, or an empty string."""
        from ._runtime.errors import EnvrunnerError, ManifestNotFoundError

        try:
            names = list(self.manifest().environments)
            if env == "?":
                return (
                    f"@pytest.mark.{MARKER}() names no environment and the manifest declares "
                    f"{len(names)}: write @pytest.mark.{MARKER}({names[0] if names else 'NAME'!r})"
                )
            self._build(env, item.config)
        except ManifestNotFoundError as exc:
            return f"envrunner: {exc}\nWith pytest: --envrunner-manifest PATH"
        except EnvrunnerError as exc:
            return f"envrunner: {exc}"
        return ""

    def _build(self, env: str, config: pytest.Config) -> None:
        """``Runner.prepare``, with the build's progress shown on the terminal, uncaptured."""
        from ._environments import resolve, state

        spec = self.manifest()[env]
        capture = config.pluginmanager.getplugin("capturemanager")
        if capture is None or state(resolve(spec)) in ("built", "external"):
            self.runner().prepare(env)
            return
        with capture.global_and_fixture_disabled():
            reporter = config.pluginmanager.getplugin("terminalreporter")
            if reporter is not None:
                reporter.ensure_newline()  # progress lines start a line of their own
            self.runner().prepare(env)

    def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.shutdown(wait=True, cancel_futures=True)


_STATE = pytest.StashKey[_Session]()


def _flatten(args: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for arg in args:
        out += _flatten(arg) if isinstance(arg, list | tuple) else [arg]
    return out


def _refusal(item: pytest.Item) -> str:
    """Why a test cannot run in a worker, or an empty string."""
    function = getattr(item, "obj", None)
    if inspect.ismethod(function):
        return (
            f"@pytest.mark.{MARKER} runs test functions, not methods: move {item.name} out of "
            "its class (its instance cannot travel to a worker)"
        )
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        return f"@pytest.mark.{MARKER} cannot run async tests: make {item.name} a plain function"
    return ""


def _unsendable(exc: Exception, item: pytest.Function, env: str, arguments: dict[str, Any]) -> str:
    what = getattr(exc, "what", "")
    reason = str(exc.__cause__ or exc)  # the innermost says what the value is and why
    for name in arguments:
        if what == f"keyword argument {name!r}":
            return (
                f"fixture {name!r} of {item.name} cannot be sent to environment {env!r}, where "
                f"the test runs: {reason}\nFixtures of a test that runs in an environment are "
                "computed here and sent to its worker as arguments: make the fixture return "
                "plain data (numbers, strings, lists, dicts, paths, arrays), or create the "
                "object inside the test"
            )
    return f"{item.name} cannot be sent to environment {env!r}: {exc}"


# --------------------------------------------------------------------------- remote failures


def _as_local(error: BaseException, test: str) -> BaseException:
    """The worker's exception, ready to raise here as the test's own.

    A test's exception (anything but envrunner's errors around it, such as a crash or a
    timeout) gets frames rebuilt from the worker's traceback text; envrunner's become a plain
    failure with their message, which says what happened and what to do.
    """
    from ._runtime.errors import EnvrunnerError, RemoteError, RemoteTraceback

    remote = error.__cause__
    if not isinstance(remote, RemoteTraceback) or (
        isinstance(error, EnvrunnerError) and not isinstance(error, RemoteError)
    ):
        from ._runtime.code import describe
        from ._runtime.pytest_body import run_test

        message = str(error).replace(describe(run_test) + "()", test)  # crash: "while running"
        return pytest.fail.Exception(f"envrunner: {message}", pytrace=False)
    earlier, relation, frames, last_line = _split_remote(remote.text)
    while frames and Path(frames[0][0]).name == "pytest_body.py":
        del frames[0]  # the runtime's frame that called the test
    error.__cause__ = None
    error.__context__ = None
    error.__suppress_context__ = True
    if earlier:
        previous = RemoteTraceback(earlier)
        if relation == "cause":
            error.__cause__ = previous
        else:
            error.__context__ = previous
            error.__suppress_context__ = False
    if isinstance(error, AssertionError) and not error.args and last_line.startswith("assert"):
        error.args = (last_line,)  # a bare assert: its statement is the most telling message
    return error.with_traceback(_traceback(error, frames))


_FRAME = re.compile(r'  File "(?P<file>.+)", line (?P<line>\d+), in (?P<name>.+)')
_CHAIN = re.compile(
    r"^(The above exception was the direct cause of the following exception:"
    r"|During handling of the above exception, another exception occurred:)$",
    re.MULTILINE,
)


def _split_remote(text: str) -> tuple[str, str, list[tuple[str, int, str]], str]:
    """Read a worker's traceback text.

    Returns:
        The text of earlier exceptions in its chain (or ""), how the last one relates to them
        (``"cause"`` or ``"context"``), the last one's frames as ``(file, line, function)``,
        and the source line of its innermost frame.
    """
    chained = list(_CHAIN.finditer(text))
    earlier, relation, last = "", "", text
    if chained:
        split = chained[-1]
        earlier = text[: split.start()].strip()
        relation = "cause" if "direct cause" in split.group() else "context"
        last = text[split.end() :]
    frames: list[tuple[str, int, str]] = []
    source = ""
    lines = last.splitlines()
    for index, line in enumerate(lines):
        match = _FRAME.fullmatch(line)
        if match:
            frames.append((match["file"], int(match["line"]), match["name"]))
            following = lines[index + 1] if index + 1 < len(lines) else ""
            source = following.strip() if following.startswith("    ") else ""
    return earlier, relation, frames, source


def _traceback(
    error: BaseException, frames: list[tuple[str, int, str]]
) -> types.TracebackType | None:
    """Real traceback entries, one per remote frame, each at its file, line and function.

    Each is the frame of a stand-in function compiled under the remote frame's file name, so
    that line numbers, source and function names are the remote ones: pytest (and ``traceback``)
    show them as they show local frames. Its one statement spans the whole source line, so no
    misleading column markers are drawn.
    """
    head: types.TracebackType | None = None
    for filename, lineno, name in reversed(frames):
        entry = _stand_in(error, filename, lineno, name)
        if entry is not None:
            head = types.TracebackType(head, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return head


def _stand_in(
    error: BaseException, filename: str, lineno: int, name: str
) -> types.TracebackType | None:
    first = _first_line(filename, lineno, name)
    width = len(linecache.getline(filename, lineno).strip())
    statement = "raise (__remote__" + " " * max(0, width - 17) + ")"
    gap = lineno - first
    source = "def _():" + (" " + statement if gap == 0 else "\n" * gap + "    " + statement)
    try:
        module = compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None
    code = next(c for c in module.co_consts if isinstance(c, types.CodeType))
    if sys.version_info >= (3, 11):
        code = code.replace(co_name=name, co_qualname=name, co_firstlineno=first)
    else:
        code = code.replace(co_name=name, co_firstlineno=first)
    stand_in = types.FunctionType(code, {"__remote__": error, "__builtins__": {}})
    try:
        stand_in()
    except BaseException as raised:
        tb = raised.__traceback__
        return tb.tb_next if tb is not None else None
    return None


def _first_line(filename: str, lineno: int, name: str) -> int:
    """The first line (first decorator included) of the function ``name`` running at ``lineno``."""
    if name == "<module>":
        return 1
    around = [
        first
        for first, last, defined in _definitions(filename)
        if defined == name and first <= lineno <= last
    ]
    return max(around) if around else lineno


@functools.lru_cache(maxsize=64)
def _definitions(filename: str) -> tuple[tuple[int, int, str], ...]:
    """``(first line, last line, name)`` of every function and class in a file."""
    text = "".join(linecache.getlines(filename))
    try:
        tree = ast.parse(text, filename)
    except (SyntaxError, ValueError):
        return ()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            found.append((first, node.end_lineno or node.lineno, node.name))
    return tuple(found)
