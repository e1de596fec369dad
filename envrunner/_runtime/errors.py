"""Every exception envrunner raises, in one tree.

::

    EnvrunnerError
    ├── ManifestError (ValueError)               the manifest is missing or wrong: .problems
    │   └── ManifestNotFoundError                no manifest was given or found
    ├── UnknownEnvironmentError (LookupError)    a task names an environment the manifest lacks
    ├── InterpreterNotFoundError (LookupError)   no Python matches an environment's `python:`
    ├── BuildError                               creating or installing an environment failed
    ├── WorkerStartError                         a worker died or hung before saying hello
    ├── WorkerCrashed                            a worker died while it ran a call
    ├── TaskTimeoutError (TimeoutError)          a call ran past its deadline; its worker was killed
    ├── ReferenceLostError (LookupError)         a kept object is gone: released, or its worker died
    ├── RemoteError                              a task raised what the caller cannot rebuild
    │                                            (any remote exception has a RemoteTraceback cause)
    ├── SerializationError (TypeError)
    │   ├── EncodeError                          an argument or result cannot be sent
    │   └── DecodeError                          a value cannot be loaded where it landed
    ├── DependencyError                          a call's input (a future it was given) failed
    ├── ProtocolError                            the two sides do not speak the same protocol
    └── RunnerClosedError (RuntimeError)         work was handed to a runner that was shut down

Every message names the object it is about (an environment, a manifest file:line, a worker pid),
the cause, and what fixes it; the object also rides along as an attribute.

``describe_exit`` (an exit in words) lives in ``exits.py``, re-exported here; the words of
hints (a close name, a clash with the runtime's requirements, stderr's tail) in ``hints.py``.
May import: the standard library and the runtime's ``exits`` and ``hints``.

This module is part of the sealed worker runtime: standard library only, parses on Python 3.9.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from .exits import describe_exit
from .hints import closest as _closest
from .hints import runtime_clashes as _runtime_clashes
from .hints import tail_block as _tail_block

__all__ = [
    "BuildError",
    "DecodeError",
    "DependencyError",
    "EncodeError",
    "EnvrunnerError",
    "InterpreterNotFoundError",
    "ManifestError",
    "ManifestNotFoundError",
    "Problem",
    "ProtocolError",
    "ReferenceLostError",
    "RemoteError",
    "RemoteTraceback",
    "RunnerClosedError",
    "SerializationError",
    "TaskTimeoutError",
    "UnknownEnvironmentError",
    "WorkerCrashed",
    "WorkerStartError",
    "describe_exit",
]


class EnvrunnerError(Exception):
    """The root of every error envrunner raises."""


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest: where, which key, what, and how to fix it.

    Attributes:
        file: The manifest (or requirements file) the problem is in.
        line: 1-based line number, or 0 when the problem concerns the whole file.
        key: Dotted path of the key, such as ``environments.torch.python``.
        message: What is wrong.
        hint: How to fix it, or an empty string.
    """

    file: str
    line: int
    key: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class ManifestError(EnvrunnerError, ValueError):
    """The manifest cannot be used; ``problems`` lists everything wrong with it at once."""

    def __init__(self, path: str, problems: Sequence[Problem]) -> None:
        self.path = path
        self.problems: Tuple[Problem, ...] = tuple(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        lines = [f"{self.path} has {len(self.problems)} problems:"]
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.path, self.problems))


class ManifestNotFoundError(ManifestError):
    """No manifest was named and none was found by discovery, or the one named is not there.

    Attributes:
        searched: Every file looked for.
        reason: What went wrong, when more is known than "none found".
        hint: What to do, when the usual hint does not fit.
    """

    def __init__(
        self, path: str, searched: Sequence[str] = (), reason: str = "", hint: str = ""
    ) -> None:
        self.searched: Tuple[str, ...] = tuple(searched)
        self.reason = reason
        self.hint = hint
        hint = hint or (
            "create environments.yaml, pass manifest=PATH (--manifest PATH on the command line), "
            "or set ENVRUNNER_MANIFEST"
        )
        message = reason or "no envrunner manifest found"
        if self.searched and not reason:
            message += " (looked for " + ", ".join(self.searched) + ")"
        super().__init__(path, [Problem(path, 0, "", message, hint)])

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.path, self.searched, self.reason, self.hint))


class UnknownEnvironmentError(EnvrunnerError, LookupError):
    """A task or command names an environment that the manifest does not declare."""

    def __init__(self, name: str, manifest: str, known: Sequence[str]) -> None:
        self.name = name
        self.manifest = manifest
        self.known: Tuple[str, ...] = tuple(known)
        message = f"no environment {name!r} in {manifest}"
        close = _closest(name, self.known)
        if close:
            message += f"; did you mean {close!r}?"
        elif self.known:
            message += "; it declares " + ", ".join(repr(k) for k in self.known)
        else:
            message += "; it declares no environments"
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.name, self.manifest, self.known))


class InterpreterNotFoundError(EnvrunnerError, LookupError):
    """No interpreter matches the requested version or path.

    Attributes:
        request: What was asked for (``"3.12"`` or a path).
        found: A line per interpreter that discovery did find, for the message.
        env: The environment that asked, if any.
        advice: What to do, when the usual advice (install that version) does not fit.
    """

    def __init__(
        self,
        request: str,
        found: Sequence[str] = (),
        env: str = "",
        detail: str = "",
        advice: str = "",
    ) -> None:
        self.request = request
        self.found: Tuple[str, ...] = tuple(found)
        self.env = env
        self.detail = detail
        who = f"environment {env!r}: " if env else ""
        message = f"{who}no Python interpreter matches {request!r}"
        if detail:
            message += f" ({detail})"
        if self.found:
            message += "; found:\n" + "\n".join(f"  {line}" for line in self.found)
        else:
            message += "; found no interpreters at all"
        self.advice = advice
        message += "\n" + (
            advice
            or "Install that version (pyenv install, uv python install, your package manager), "
            "point python: at an interpreter's path, or add its folder to ENVRUNNER_PYTHONS."
        )
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.request, self.found, self.env, self.detail, self.advice))


# --------------------------------------------------------------------------- builds


class BuildError(EnvrunnerError):
    """Creating or installing an environment failed; nothing half-built was kept.

    Attributes:
        env: The environment's name.
        step: What was running (``"create"``, ``"install"``, ...).
        log_path: The full log of the failed build, kept for reading.
        tail: The installer's last output lines.
    """

    def __init__(
        self,
        env: str,
        step: str,
        reason: str,
        log_path: str = "",
        tail: Sequence[str] = (),
        hint: str = "",
    ) -> None:
        self.env = env
        self.step = step
        self.reason = reason
        self.log_path = log_path
        self.tail: Tuple[str, ...] = tuple(tail)
        self.hint = hint
        lines = [f"environment {env!r}: {step} failed: {reason}"]
        if self.tail:
            lines.append("last lines of the installer's output:")
            lines += [f"  | {line}" for line in self.tail]
        lines += _runtime_clashes(self.tail)
        if log_path:
            lines.append(f"full log: {log_path}")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (
            type(self),
            (self.env, self.step, self.reason, self.log_path, self.tail, self.hint),
        )


# --------------------------------------------------------------------------- workers


class WorkerStartError(EnvrunnerError):
    """A worker did not come up: it exited, hung, or spoke another protocol before its hello."""

    def __init__(
        self,
        env: str,
        pid: int,
        reason: str,
        stderr_tail: Sequence[str] = (),
        returncode: Optional[int] = None,
    ) -> None:
        self.env = env
        self.pid = pid
        self.reason = reason
        self.returncode = returncode
        self.stderr_tail: Tuple[str, ...] = tuple(stderr_tail)
        super().__init__(
            f"worker for environment {env!r} (pid {pid}) failed to start: {reason}"
            + _tail_block(self.stderr_tail)
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (
            type(self),
            (self.env, self.pid, self.reason, self.stderr_tail, self.returncode),
        )


class WorkerCrashed(EnvrunnerError):  # noqa: N818 - the name users are told to catch
    """The worker running a call died before it answered.

    Attributes:
        env: The environment's name.
        pid: The worker's process id.
        returncode: Its exit status (negative: the signal that killed it).
        stderr_tail: Its last lines on stderr.
    """

    def __init__(
        self,
        env: str,
        pid: int,
        returncode: Optional[int],
        stderr_tail: Sequence[str] = (),
        call: str = "",
        reason: str = "",
    ) -> None:
        self.env = env
        self.pid = pid
        self.returncode = returncode
        self.stderr_tail: Tuple[str, ...] = tuple(stderr_tail)
        self.call = call
        self.reason = reason
        what = f" while running {call}" if call else ""
        cause = reason or describe_exit(returncode)
        super().__init__(
            f"worker for environment {env!r} (pid {pid}) died{what}: {cause}"
            + _tail_block(self.stderr_tail)
        )

    @property
    def signal(self) -> Optional[str]:
        """The name of the signal that killed the worker, or None if it exited."""
        if self.returncode is None or self.returncode >= 0:
            return None
        import signal

        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return str(-self.returncode)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (
            type(self),
            (self.env, self.pid, self.returncode, self.stderr_tail, self.call, self.reason),
        )


class TaskTimeoutError(EnvrunnerError, TimeoutError):
    """A call ran longer than its timeout; its worker was killed and will be replaced."""

    def __init__(self, env: str, call: str, timeout: float, pid: int = 0) -> None:
        self.env = env
        self.call = call
        self.timeout = timeout
        self.pid = pid
        super().__init__(
            f"{call} in environment {env!r} ran past its timeout of {timeout:g}s; "
            f"its worker (pid {pid}) was killed and will be replaced "
            "(raise timeout= on the task or in the manifest if the call needs longer)"
        )

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.env, self.call, self.timeout, self.pid))


class ReferenceLostError(EnvrunnerError, LookupError):
    """A reference to an object kept in a worker can no longer be used.

    Attributes:
        env: The environment whose worker kept the object.
        reason: Why it is gone.
    """

    def __init__(self, env: str, what: str, reason: str) -> None:
        self.env = env
        self.what = what
        self.reason = reason
        super().__init__(
            f"{what} kept in environment {env!r} is gone: {reason}. Keep a result only as long "
            "as its worker lives, and fetch() what must outlive it"
        )

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.env, self.what, self.reason))


class RemoteError(EnvrunnerError):
    """A task raised an exception whose type cannot be rebuilt in the caller.

    The remote traceback is attached as ``__cause__`` and printed with the error.

    Attributes:
        type_name: The remote exception's qualified type name, such as ``torch.OutOfMemoryError``.
        message: ``str()`` of the remote exception.
        env: The environment it was raised in.
    """

    def __init__(self, type_name: str, message: str, env: str = "") -> None:
        self.type_name = type_name
        self.message = message
        self.env = env
        where = f" in environment {env!r}" if env else ""
        super().__init__(f"{type_name}: {message}" + (f" (raised{where})" if where else ""))

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.type_name, self.message, self.env))


class RemoteTraceback(Exception):  # noqa: N818 - a traceback, not an error: the name says what it holds
    """The traceback of an exception raised in a worker, attached to it as ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class SerializationError(EnvrunnerError, TypeError):
    """A value or function could not cross between environments."""


class EncodeError(SerializationError):
    """An argument, result or function cannot be sent.

    Attributes:
        what: What was being sent (``"argument 2 (x)"``, ``"the result of f"``).
    """

    def __init__(self, message: str, what: str = "") -> None:
        self.what = what
        super().__init__(message)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (str(self), self.what))


class DecodeError(SerializationError):
    """A value arrived but cannot be loaded where it landed (a module missing there, say).

    Attributes:
        module: The missing module, if that is the cause.
        env: The environment involved.
    """

    def __init__(self, message: str, module: str = "", env: str = "") -> None:
        self.module = module
        self.env = env
        super().__init__(message)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (str(self), self.module, self.env))


class DependencyError(EnvrunnerError):
    """A call did not run: a call it depends on (a future among its arguments, or theirs)
    failed. ``ancestor`` names that call, ``error`` its error in words; ``__cause__`` is its
    error itself (set where the future's error is asked for)."""

    def __init__(self, task: str, env: str, ancestor: str, error: str, via: str = "") -> None:
        through = f" (through {via})" if via else ""
        super().__init__(
            f"{task} in environment {env!r} did not run: its input {ancestor}{through} failed "
            f"with {error}; calls that do not depend on it ran as usual. Fix {ancestor} (its "
            "error is this one's cause) and run again"
        )
        self.task, self.env, self.ancestor, self.error, self.via = task, env, ancestor, error, via
        self.failed: object = None  # the ancestor's future: its error becomes the cause


class ProtocolError(EnvrunnerError):
    """The two sides do not speak the same protocol version, or a message was malformed."""


class RunnerClosedError(EnvrunnerError, RuntimeError):
    """Work was handed to a runner after it was shut down."""


# Tracebacks and pickles name them as users import them: envrunner.WorkerCrashed, not the
# private module (workers' `envrunner` exports the same names).
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) and issubclass(_value, BaseException):
        _value.__module__ = "envrunner"
del _name, _value
