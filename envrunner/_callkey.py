"""A call's cache key, and the facts of the environment it runs in.

May import: the standard library, ``envrunner._digest``, ``envrunner._identity``,
``envrunner._environments`` and
``envrunner._records`` (on first use, for :func:`env_facts`).

A call's key (:func:`call_key`) is one digest over

    the function's identity (envrunner._identity: its code per Python version, closure values,
        the globals it reads, the project functions it calls, recursively)
    the arguments' digest (envrunner._digest), bound to the signature first, defaults applied,
        so that f(1, b=2), f(1, 2) and f(1) (when b=2 is the default) are one call
    the environment (EnvFacts): its name, content key, interpreter version and the name and
        version of every installed distribution (upgrading torch invalidates)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._digest import digest_value
from ._identity import Identity, function_identity

if TYPE_CHECKING:
    from ._environments import Resolved

__all__ = [
    "CallInputs",
    "CallKey",
    "EnvFacts",
    "call_inputs",
    "call_key",
    "describe_packages",
    "env_facts",
    "key_for",
]


@dataclass(frozen=True)
class EnvFacts:
    """The environment a call runs in, as far as its results depend on it.

    Attributes:
        name: The manifest's name for it.
        key: Its content key (None for an environment used as it is).
        python: Its interpreter's version, e.g. ``"3.11.9"``.
        packages: Each installed distribution's name and version.
    """

    name: str
    key: str | None
    python: str
    packages: Mapping[str, str] = field(default_factory=dict)

    @functools.cached_property
    def digest(self) -> str:
        """One digest over all of it (computed once: a runner keeps one per environment)."""
        packages = sorted((name.lower(), version) for name, version in self.packages.items())
        return digest_value(["env", self.name, self.key, self.python, packages])


@dataclass(frozen=True)
class CallKey:
    """One call's cache key and what it is made of (kept with the result, shown by the CLI)."""

    task: str
    key: str
    identity: Identity
    arguments: str
    argument_digests: Mapping[str, str]
    env: EnvFacts

    @property
    def seen_id(self) -> str:
        """Names the (task, arguments) pair, whatever the code and environment."""
        return digest_value((self.task, self.arguments))


def env_facts(resolved: Resolved) -> EnvFacts:
    """What an environment contributes to keys: its build record's packages, or (for an
    environment used as it is, which has no record) what its Python finds installed now.

    Call it once per runner and environment, after the environment is built.
    """
    from ._records import packages as _packages
    from ._records import read_record

    record = read_record(resolved.path) if resolved.key is not None else None
    if record is not None:
        packages = {p["name"]: p["version"] for p in record.get("packages", [])}
    else:
        found = _packages(resolved.spec.name, resolved.python)
        packages = {name: version for name, version, _ in found}
    interpreter = resolved.interpreter
    python = ".".join(map(str, interpreter.version))
    if interpreter.implementation != "cpython":
        python = f"{interpreter.implementation} {python}"
    return EnvFacts(resolved.spec.name, resolved.key, python, packages)


def call_key(fn: Any, args: Sequence[Any], kwargs: Mapping[str, Any], env: EnvFacts) -> CallKey:
    """The cache key of calling ``fn(*args, **kwargs)`` in ``env``.

    Raises:
        envrunner._digest.UnhashableValueError: an argument has no digest (it names which).
    """
    return key_for(call_inputs(fn, args, kwargs), env)


@dataclass(frozen=True)
class CallInputs:
    """The caller's half of a key: the function's identity and the arguments' digests, taken
    when the call is submitted (the arguments may change after)."""

    identity: Identity
    arguments: str
    argument_digests: Mapping[str, str]


def call_inputs(fn: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> CallInputs:
    """The function's identity and the arguments' digests, without the environment.

    Raises:
        envrunner._digest.UnhashableValueError: an argument has no digest (it names which).
    """
    identity = function_identity(fn)
    digests = _argument_digests(fn, args, kwargs)
    return CallInputs(identity, digest_value(list(digests.items())), digests)


def key_for(inputs: CallInputs, env: EnvFacts) -> CallKey:
    """The key of a call whose inputs are known, in ``env``."""
    key = digest_value(["envrunner-call-1", inputs.identity.digest, inputs.arguments, env.digest])
    return CallKey(
        inputs.identity.function,
        key,
        inputs.identity,
        inputs.arguments,
        inputs.argument_digests,
        env,
    )


def _argument_digests(fn: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, str]:
    try:
        bound = _signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError):  # no signature, or a call that will fail in the worker
        named = {f"[{i}]": a for i, a in enumerate(args)}
        named.update(kwargs)
        return {name: digest_value(v, f"argument {name!r}") for name, v in named.items()}
    bound.apply_defaults()
    return {name: digest_value(v, f"argument {name!r}") for name, v in bound.arguments.items()}


_signatures: dict[int, tuple[Any, inspect.Signature]] = {}


def _signature(fn: Any) -> inspect.Signature:
    known = _signatures.get(id(fn))
    if known is not None and known[0] is fn:
        return known[1]
    signature = inspect.signature(fn)
    if len(_signatures) > 1024:
        _signatures.clear()
    _signatures[id(fn)] = (fn, signature)
    return signature


def describe_packages(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """``["numpy 1.26.4 -> 2.1.0", "scipy added (1.14.1)", "six removed"]``."""
    lower_old = {k.lower(): (k, v) for k, v in old.items()}
    lower_new = {k.lower(): (k, v) for k, v in new.items()}
    said = []
    for name in sorted(set(lower_old) | set(lower_new)):
        before, after = lower_old.get(name), lower_new.get(name)
        if before is None and after is not None:
            said.append(f"{after[0]} added ({after[1]})")
        elif after is None and before is not None:
            said.append(f"{before[0]} removed")
        elif before is not None and after is not None and before[1] != after[1]:
            said.append(f"{after[0]} {before[1]} -> {after[1]}")
    return said
