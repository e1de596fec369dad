"""The manifest: YAML to frozen, validated records (DESIGN.md layer 1).

``load_manifest`` reads one file and checks every key, collecting every problem (file:line,
key, hint) into one ``ManifestError``; the records it returns live in ``_specs`` and the search
for the file in ``_discovery`` (both re-exported here, where callers import them).

May import: the standard library, yaml, ``envrunner._runtime.errors``, ``envrunner._runtime.hints``,
``envrunner._yaml``, ``envrunner._discovery``, ``envrunner._launchspec``, ``envrunner._specs``.

CONTRACT (fixed):

- ``find_manifest(explicit=None, start=None) -> Path``
- ``load_manifest(path) -> Manifest``; raises ``ManifestError`` listing every problem at once.
- ``Manifest`` / ``EnvSpec`` / ``PipOptions`` / ``SmokeCheck`` / ``Location`` as in ``_specs``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import yaml

from ._discovery import MANIFEST_ENV, find_manifest, missing_file
from ._launchspec import LAUNCH_KEYS, read_launch
from ._runtime.errors import ManifestError, Problem
from ._runtime.hints import closest
from ._specs import EnvSpec, Installer, Location, Manifest, PipOptions, SmokeCheck
from ._yaml import Entry, NodeReader, line_of, read_requirement_files, shown_path

__all__ = [
    "ENV_KEYS",
    "MANIFEST_ENV",
    "PIP_KEYS",
    "SMOKE_KEYS",
    "TOP_KEYS",
    "EnvSpec",
    "Installer",
    "Location",
    "Manifest",
    "PipOptions",
    "SmokeCheck",
    "find_manifest",
    "load_manifest",
]

# --------------------------------------------------------------------------- loading

TOP_KEYS = ("version", "defaults", "environments", "records")
ENV_KEYS = (
    "python",
    "requirements",
    "env",
    "workers",
    "pip",
    "system_site_packages",
    "installer",
    "smoke",
    "timeout",
    "idle_timeout",
    "max_calls",
    "build_timeout",
    "lock",
    *LAUNCH_KEYS,
)
PIP_KEYS = ("index_url", "extra_index_urls", "find_links", "pre")
SMOKE_KEYS = ("run", "exit_code")
_INSTALLERS: dict[str, Installer] = {"auto": "auto", "uv": "uv", "pip": "pip"}
_MERGED_KEYS = ("env", "pip")  # mappings that defaults merge into key by key

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VERSION = re.compile(r"\d+(?:\.\d+){0,2}")

_NAME_HINT = (
    "use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit: "
    "names become folder names and log prefixes"
)
_ENVIRONMENTS_HINT = 'declare at least one, e.g. environments: {torch: {python: "3.12"}}'


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a manifest.

    Args:
        path: The manifest file.

    Returns:
        The manifest, with defaults merged into each environment and every path made absolute.

    Raises:
        ManifestNotFoundError: The file does not exist.
        ManifestError: The file cannot be used; ``problems`` lists everything wrong with it,
            each with its file, line, key and a hint.
    """
    file = Path(path).expanduser().absolute()
    shown = shown_path(file)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise missing_file(file, shown)
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(shown, [Problem(shown, 0, "", f"cannot read the manifest: {exc}")])
    return _ManifestReader(file, shown).read(text)


class _ManifestReader:
    """Turns one manifest's nodes into a :class:`Manifest`, collecting every problem."""

    def __init__(self, file: Path, shown: str) -> None:
        self.file = file
        self.folder = file.parent
        self.problems: list[Problem] = []
        self.nodes = NodeReader(shown, self.problems)
        self._requirement_files: dict[Path, tuple[Path, ...]] = {}

    def read(self, text: str) -> Manifest:
        root = self.nodes.compose(text)
        environments: dict[str, EnvSpec] = {}
        records: bool | Path = False
        top = Entry("", "", line_of(root), root) if root is not None else None
        if top is not None and not top.is_null:
            keys = self.nodes.entries(top, "a mapping with 'version:' and 'environments:'")
            if keys is not None:
                self.nodes.unknown_keys(keys, TOP_KEYS)
                self._version(keys, top.line)
                defaults = self._defaults(keys)
                environments = self._environments(keys, defaults, top.line)
                records = self._records(keys.get("records"))
        elif not self.problems:
            hint = "start it with 'version: 1' and an 'environments:' mapping"
            self.nodes.problem(1, "", "the manifest is empty", hint)
        if self.problems:
            problems = sorted(dict.fromkeys(self.problems), key=self._order)
            raise ManifestError(self.nodes.file, problems)
        return Manifest(self.file, 1, MappingProxyType(environments), records)

    def _order(self, problem: Problem) -> tuple[bool, str, int]:
        """The manifest's own problems first, by line; then those of requirements files."""
        return (problem.file != self.nodes.file, problem.file, problem.line)

    def _version(self, keys: dict[str, Entry], line: int) -> None:
        entry = keys.get("version")
        if entry is None:
            self.nodes.problem(line, "version", "missing", "add 'version: 1' as the first line")
            return
        value = self.nodes.scalar(entry)
        if isinstance(value, bool) or not isinstance(value, int):
            self.nodes.expected(entry, "the number 1", "write 'version: 1'")
        elif value != 1:
            message = f"unsupported manifest version {value}: this envrunner reads version 1"
            self.nodes.problem(entry.line, "version", message, "write 'version: 1'")

    def _records(self, entry: Entry | None) -> bool | Path:
        value = None if entry is None else self.nodes.scalar(entry)
        if entry is None or entry.is_null or isinstance(value, bool):
            return bool(value)
        if isinstance(value, str) and value:
            return self.folder / Path(value).expanduser()
        self.nodes.expected(entry, "true, false or a database path", "write 'records: true'")
        return False

    def _defaults(self, keys: dict[str, Entry]) -> dict[str, Entry]:
        entry = keys.get("defaults")
        if entry is None or entry.is_null:
            return {}
        found = self.nodes.entries(entry, "a mapping of settings such as 'workers:'")
        if found is None:
            return {}
        self.nodes.unknown_keys(found, ENV_KEYS)
        found = {key: value for key, value in found.items() if key in ENV_KEYS}
        self._spec("defaults", entry, found, {})  # report the defaults' problems once, first
        return found

    def _environments(
        self, keys: dict[str, Entry], defaults: dict[str, Entry], line: int
    ) -> dict[str, EnvSpec]:
        entry = keys.get("environments")
        if entry is None:
            self.nodes.problem(line, "environments", "missing", _ENVIRONMENTS_HINT)
            return {}
        found = {} if entry.is_null else self.nodes.entries(entry, "a mapping of names to settings")
        if found is None:
            return {}
        if not found:
            self.nodes.problem(
                entry.line, "environments", "no environments declared", _ENVIRONMENTS_HINT
            )
        result: dict[str, EnvSpec] = {}
        for name, spec in found.items():
            if not _NAME.fullmatch(name):
                message = f"invalid environment name {name!r}"
                self.nodes.problem(spec.line, spec.path, message, _NAME_HINT)
            own = {} if spec.is_null else self.nodes.entries(spec, "a mapping of settings")
            if own is None:
                continue
            self.nodes.unknown_keys(own, ENV_KEYS)
            own = {key: value for key, value in own.items() if key in ENV_KEYS}
            bases = {key: defaults[key] for key in _MERGED_KEYS if key in defaults and key in own}
            result[name] = self._spec(name, spec, {**defaults, **own}, bases)
        return result

    def _spec(
        self, name: str, where: Entry, keys: dict[str, Entry], bases: dict[str, Entry]
    ) -> EnvSpec:
        nodes = self.nodes
        locations = {key: Location(self.file, entry.line) for key, entry in keys.items()}
        python, python_path = f"{sys.version_info[0]}.{sys.version_info[1]}", None
        if "python" in keys:
            python, python_path = self._python(keys["python"])
        requirements: tuple[str, ...] = ()
        requirements_file: Path | None = None
        requirement_files: tuple[Path, ...] = ()
        if "requirements" in keys:
            requirements, requirements_file, requirement_files = self._requirements(
                keys["requirements"]
            )
        workers, installer, system_site_packages = 1, _INSTALLERS["auto"], False
        if "workers" in keys:
            workers = nodes.whole(keys["workers"], 1, "e.g. 'workers: 2'") or 1
        if "installer" in keys:
            installer = self._installer(keys["installer"])
        if "system_site_packages" in keys:
            system_site_packages = bool(nodes.flag(keys["system_site_packages"]))
        timeout = idle_timeout = None
        if "timeout" in keys:
            timeout = nodes.number(keys["timeout"], 0, False, "e.g. 'timeout: 600', or null")
        if "idle_timeout" in keys:
            idle_timeout = nodes.number(keys["idle_timeout"], 0, True, "e.g. 'idle_timeout: 300'")
        max_calls = build_timeout = None
        if "max_calls" in keys and not keys["max_calls"].is_null:
            max_calls = nodes.whole(keys["max_calls"], 1, "e.g. 'max_calls: 100', or null")
        if "build_timeout" in keys:
            build_timeout = nodes.number(
                keys["build_timeout"], 0, False, "e.g. 'build_timeout: 1800', or null"
            )
        lock = (
            self._lock(keys["lock"], bool(requirements or requirements_file))
            if "lock" in keys
            else None
        )
        return EnvSpec(
            name=name,
            location=Location(self.file, where.line),
            python=python,
            python_path=python_path,
            requirements=requirements,
            requirements_file=requirements_file,
            requirement_files=requirement_files,
            env=self._env(keys.get("env"), bases.get("env"), locations),
            workers=workers,
            pip=self._pip(keys.get("pip"), bases.get("pip"), locations),
            system_site_packages=system_site_packages,
            installer=installer,
            smoke=self._smoke(keys["smoke"]) if "smoke" in keys else (),
            timeout=timeout,
            idle_timeout=idle_timeout,
            max_calls=max_calls,
            build_timeout=build_timeout,
            lock=lock,
            locations=MappingProxyType(locations),
            launch=read_launch(nodes, keys),
        )

    # ------------------------------------------------------------------ one key each

    def _python(self, entry: Entry) -> tuple[str, Path | None]:
        text = (self.nodes.raw(entry) or "").strip()
        what = 'a version such as "3.12" or a path to an interpreter'
        if not text or not isinstance(entry.node, yaml.ScalarNode):
            hint = "remove the key to use the running Python's version" if entry.is_null else ""
            self.nodes.expected(entry, what, hint)
            return text, None
        if not _is_path(text):
            if not _VERSION.fullmatch(text):
                named = re.fullmatch(r"(?:python|py|cpython)-?(\d+(?:\.\d+){0,2})", text.lower())
                hint = (
                    f'write "{named.group(1)}"'
                    if named
                    else "a path contains '/' or starts with '~' or '.', e.g. ./venv/bin/python"
                )
                self.nodes.problem(entry.line, entry.path, f"expected {what}, got {text!r}", hint)
            return text, None
        path = self._absolute(text)
        if path.is_dir():
            executable = path / "bin" / "python"
            if not executable.exists():
                message = f"{text!r} is a folder without bin/python: not a virtualenv"
                hint = "point python: at a virtualenv folder or at an interpreter"
                self.nodes.problem(entry.line, entry.path, message, hint)
            return text, executable
        if not path.exists():
            message = f"{text!r} does not exist"
            hint = f"looked for {path}"
            if not Path(text).expanduser().is_absolute():
                hint += "; relative paths start from the manifest's folder"
            self.nodes.problem(entry.line, entry.path, message, hint)
        elif not os.access(path, os.X_OK):
            message = f"{text!r} is not executable"
            self.nodes.problem(entry.line, entry.path, message, f"chmod +x {path}")
        return text, path

    def _requirements(self, entry: Entry) -> tuple[tuple[str, ...], Path | None, tuple[Path, ...]]:
        if isinstance(entry.node, yaml.SequenceNode):
            found: list[str] = []
            for item in self.nodes.items(entry, "a list") or ():
                text = self.nodes.text(item, 'a requirement string such as "numpy>=2"')
                if text is None:
                    continue
                text = text.strip()
                if not text:
                    self.nodes.problem(item.line, item.path, "empty requirement", "remove the item")
                elif "\n" in text or "\r" in text:
                    message = "a requirement must fit on one line"
                    hint = "write one requirement per list item"
                    self.nodes.problem(item.line, item.path, message, hint)
                elif text.startswith("-"):
                    self._option_as_requirement(item, text)
                else:
                    found.append(text)
            return tuple(found), None, ()
        what = "a list of requirement strings or the path of a requirements file"
        text = self.nodes.text(entry, what)
        if text is None:
            return (), None, ()
        main = self._absolute(text.strip())
        if not main.is_file():
            kind = "is a folder, not a file" if main.is_dir() else "not found"
            hint = f"looked for {main.name} in {main.parent}"
            if "/" not in text and not text.endswith((".txt", ".in")):
                hint += f"; for a single requirement write 'requirements: [{text}]'"
            self.nodes.problem(entry.line, entry.path, f"requirements file {text!r} {kind}", hint)
            return (), main, ()
        if main not in self._requirement_files:
            files = read_requirement_files(main, entry.path, self.problems)
            self._requirement_files[main] = files
        return (), main, self._requirement_files[main]

    def _lock(self, entry: Entry, has_requirements: bool) -> Path | None:
        what = "the path of a pylock.toml or of a requirements file with hashes"
        text = self.nodes.text(entry, what)
        if text is None:
            return None
        path = self._absolute(text.strip())
        name = path.name
        if not (re.fullmatch(r"pylock(\.[^.]+)?\.toml", name) or name.endswith(".txt")):
            message = f"lock file {text!r}: expected pylock.toml, pylock.NAME.toml or a .txt file"
            hint = "PEP 751 names lock files pylock.toml or pylock.NAME.toml"
            self.nodes.problem(entry.line, entry.path, message, hint)
            return path
        if path.is_dir():
            self.nodes.problem(entry.line, entry.path, f"lock file {text!r} is a folder")
        elif not path.exists():
            if not has_requirements:  # the lock is the environment's only source
                hint = f"looked for {path}; or give requirements: and run envrunner lock"
                self.nodes.problem(entry.line, entry.path, f"lock file {text!r} not found", hint)
        elif name.endswith(".txt") and "--hash" not in path.read_text(errors="replace"):
            message = f"lock file {text!r} has no hashes"
            hint = "write it with uv pip compile --generate-hashes, or name it in requirements:"
            self.nodes.problem(entry.line, entry.path, message, hint)
        return path

    def _option_as_requirement(self, item: Entry, text: str) -> None:
        """Refuse an installer option written as a requirement (it would reach the installer's
        command line as an option: ``-e /tmp``, ``--index-url=...``)."""
        option = text.split("=", 1)[0].split(maxsplit=1)[0]
        if option in ("-e", "--editable"):
            hint = (
                "a local project is a requirement 'NAME @ file:///ABSOLUTE/PATH'; editable "
                "installs are not supported in a manifest"
            )
        else:
            hint = (
                "installer options go under the 'pip:' key of the environment ("
                + ", ".join(PIP_KEYS)
                + "), or in a requirements file named by 'requirements:'"
            )
        message = f"{text!r} is an installer option ({option}), not a requirement"
        self.nodes.problem(item.line, item.path, message, hint)

    def _installer(self, entry: Entry) -> Installer:
        text = self.nodes.text(entry, "auto, uv or pip")
        if text is not None and text not in _INSTALLERS:
            near = closest(text, _INSTALLERS)
            hint = (f"did you mean {near!r}? " if near else "") + "valid: auto, uv, pip"
            self.nodes.problem(entry.line, entry.path, f"unknown installer {text!r}", hint)
        return _INSTALLERS.get(text or "auto", "auto")

    def _merged(self, entry: Entry, base: Entry | None, what: str) -> dict[str, Entry] | None:
        merged: dict[str, Entry] = {}
        if base is not None and isinstance(base.node, yaml.MappingNode):
            merged.update(self.nodes.entries(base, what) or {})
        own = self.nodes.entries(entry, what)
        if own is None:
            return None
        merged.update(own)
        return merged

    def _env(
        self, entry: Entry | None, base: Entry | None, locations: dict[str, Location]
    ) -> Mapping[str, str]:
        result: dict[str, str] = {}
        merged = self._merged(entry, base, "a mapping of variable names to values") if entry else {}
        for name, item in (merged or {}).items():
            locations[f"env.{name}"] = Location(self.file, item.line)
            if not _ENV_VAR.fullmatch(name):
                hint = "use letters, digits and '_', not starting with a digit"
                self.nodes.problem(item.line, item.path, f"invalid variable name {name!r}", hint)
            value = self.nodes.raw(item)
            if value is not None and "\0" in value:  # (Popen: "embedded null byte")
                message = "a value cannot hold a NUL byte (\\0): no process can be given it"
                self.nodes.problem(item.line, item.path, message, "remove it")
            elif value is not None and isinstance(item.node, yaml.ScalarNode):
                result[name] = value
            elif item.is_null:
                hint = f"write '{name}: \"\"' for an empty value, or remove the line"
                self.nodes.problem(item.line, item.path, "no value", hint)
            else:
                self.nodes.expected(item, "a single value", 'quote it: "..."')
        return MappingProxyType(result)

    def _pip(
        self, entry: Entry | None, base: Entry | None, locations: dict[str, Location]
    ) -> PipOptions:
        merged = self._merged(entry, base, "a mapping of installer options") if entry else {}
        keys = merged or {}
        self.nodes.unknown_keys(keys, PIP_KEYS)
        for key, item in keys.items():
            locations[f"pip.{key}"] = Location(self.file, item.line)
        index_url = None
        if "index_url" in keys and not keys["index_url"].is_null:
            index_url = self.nodes.text(keys["index_url"], "a URL or null")
        lists: dict[str, list[str]] = {"extra_index_urls": [], "find_links": []}
        for key, found in lists.items():
            hint = f"write '{key}: [...]'"
            for item in (self.nodes.items(keys[key], "a list", hint) or ()) if key in keys else ():
                value = self.nodes.text(item, "a URL or path" if key == "find_links" else "a URL")
                if value is not None:
                    found.append(value)
        find_links = [
            link if "://" in link else str(self._absolute(link)) for link in lists["find_links"]
        ]
        pre = bool(self.nodes.flag(keys["pre"])) if "pre" in keys else False
        return PipOptions(index_url, tuple(lists["extra_index_urls"]), tuple(find_links), pre)

    def _smoke(self, entry: Entry) -> tuple[SmokeCheck, ...]:
        hint = 'e.g. smoke: ["import numpy", {run: "python -c \'print(1)\'", exit_code: 0}]'
        what = "a Python snippet (a string) or a mapping {run: COMMAND, exit_code: 0}"
        checks: list[SmokeCheck] = []
        for item in self.nodes.items(entry, "a list of checks", hint) or ():
            location = Location(self.file, item.line)
            if isinstance(item.node, yaml.MappingNode):
                keys = self.nodes.entries(item) or {}
                self.nodes.unknown_keys(keys, SMOKE_KEYS)
                run = self.nodes.text(keys["run"], "a shell command") if "run" in keys else None
                if "run" not in keys:
                    hint = 'write {run: "command", exit_code: 0}'
                    self.nodes.problem(item.line, item.path, "missing 'run:'", hint)
                elif run is not None and not run.strip():
                    self.nodes.problem(item.line, item.path, "empty command", "remove the check")
                exit_code = 0
                if "exit_code" in keys:
                    value = self.nodes.scalar(keys["exit_code"])
                    if isinstance(value, int) and not isinstance(value, bool):
                        exit_code = value
                    else:
                        self.nodes.expected(keys["exit_code"], "a whole number (exit status)")
                checks.append(SmokeCheck(location, run=run, exit_code=exit_code))
                continue
            code = self.nodes.text(item, what)
            if code is not None and not code.strip():
                self.nodes.problem(item.line, item.path, "empty check", "remove the item")
            checks.append(SmokeCheck(location, code=code))
        return tuple(checks)

    def _absolute(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.folder / path


def _is_path(text: str) -> bool:
    return "/" in text or text.startswith(("~", "."))
