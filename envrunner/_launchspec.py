"""Where an environment's workers run: ``launcher:``, ``slurm:`` and ``hosts:`` of a manifest.

::

    launcher: local            (the default) child processes of the caller
    launcher: slurm            each worker is a Slurm job (submitit), with ``slurm: {...}``
    launcher: ssh              each worker runs on one of ``hosts: [...]`` through ``ssh``

May import: the standard library, yaml, ``envrunner._runtime.hints``, ``envrunner._yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from ._runtime.hints import closest
from ._yaml import Entry, NodeReader

__all__ = ["LAUNCHERS", "LAUNCH_KEYS", "SLURM_KEYS", "LaunchSpec", "read_launch"]

LAUNCHERS = ("local", "slurm", "ssh")
LAUNCH_KEYS = ("launcher", "slurm", "hosts", "ssh")
SSH_KEYS = ("python", "tunnel", "options")
#: The Slurm settings envrunner reads itself; ``extra`` passes anything else to sbatch.
SLURM_KEYS = (
    "partition",
    "cpus_per_task",
    "gpus",
    "mem",
    "time",
    "account",
    "qos",
    "constraint",
    "setup",
    "extra",
)

_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?")
_MEM = re.compile(r"\d+[KMGT]?")
_SBATCH_OPTION = re.compile(r"[a-z][a-z0-9_-]*")
_SLURM_HINT = 'e.g. slurm: {partition: gpu, cpus_per_task: 8, gpus: 1, mem: 32G, time: "02:00:00"}'


@dataclass(frozen=True)
class LaunchSpec:
    """Where an environment's workers run.

    Attributes:
        kind: ``"local"``, ``"slurm"`` or ``"ssh"``.
        slurm: The validated ``slurm:`` settings (``time`` in minutes, ``setup`` a tuple of shell
            lines, ``extra`` a mapping of other sbatch options).
        hosts: The machines of ``launcher: ssh``, used in turn.
        ssh: The validated ``ssh:`` settings (``python``, ``tunnel``, ``options``).
    """

    kind: str = "local"
    slurm: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    hosts: tuple[str, ...] = ()
    ssh: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def local(self) -> bool:
        """Whether its workers run on this machine (shared memory, direct channels)."""
        return self.kind == "local"


def slurm_minutes(text: str) -> int | None:
    """Slurm's time formats (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM:SS``) in
    whole minutes (rounded up), or None when ``text`` is none of them."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        return None
    days, first, second, third = match.groups()
    numbers = [int(x) for x in (first, second, third) if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = ([*numbers, 0, 0])[:3]
        hours += int(days) * 24
    elif len(numbers) == 3:
        hours, minutes, seconds = numbers
    else:  # MM or MM:SS
        hours, minutes, seconds = 0, numbers[0], (numbers[1] if len(numbers) > 1 else 0)
    total = hours * 60 + minutes + (1 if seconds else 0)
    return total if total > 0 else None


def read_launch(nodes: NodeReader, keys: dict[str, Entry]) -> LaunchSpec:
    """The launcher of one environment (its ``launcher``, ``slurm`` and ``hosts`` keys)."""
    kind = "local"
    if "launcher" in keys:
        entry = keys["launcher"]
        text = nodes.text(entry, "local, slurm or ssh")
        if text is not None and text not in LAUNCHERS:
            near = closest(text, LAUNCHERS)
            hint = (f"did you mean {near!r}? " if near else "") + "valid: local, slurm, ssh"
            nodes.problem(entry.line, entry.path, f"unknown launcher {text!r}", hint)
        elif text is not None:
            kind = text
    slurm: dict[str, Any] = {}
    if "slurm" in keys:
        entry = keys["slurm"]
        if kind != "slurm":
            hint = "add 'launcher: slurm', or remove 'slurm:'"
            nodes.problem(entry.line, entry.path, f"slurm settings with launcher: {kind}", hint)
        slurm = _slurm(nodes, entry)
    hosts: list[str] = []
    if "hosts" in keys:
        entry = keys["hosts"]
        if kind != "ssh":
            hint = "add 'launcher: ssh', or remove 'hosts:'"
            nodes.problem(entry.line, entry.path, f"hosts with launcher: {kind}", hint)
        for item in nodes.items(entry, "a list of host names", "e.g. hosts: [gpu1, gpu2]") or ():
            host = nodes.text(item, "a host name (as ssh knows it)")
            if host is not None and (not host.strip() or host.startswith("-") or " " in host):
                nodes.problem(item.line, item.path, f"invalid host {host!r}", "e.g. user@gpu1")
            elif host is not None:
                hosts.append(host)
    ssh: dict[str, Any] = {}
    if "ssh" in keys:
        entry = keys["ssh"]
        if kind != "ssh":
            hint = "add 'launcher: ssh', or remove 'ssh:'"
            nodes.problem(entry.line, entry.path, f"ssh settings with launcher: {kind}", hint)
        ssh = _ssh(nodes, entry)
    if kind == "ssh" and not hosts:
        where = keys.get("launcher")
        line = where.line if where is not None else 0
        path = where.path if where is not None else "launcher"
        nodes.problem(line, path, "launcher: ssh needs hosts", "add e.g. hosts: [gpu1]")
    return LaunchSpec(kind, MappingProxyType(slurm), tuple(hosts), MappingProxyType(ssh))


def _ssh(nodes: NodeReader, entry: Entry) -> dict[str, Any]:
    keys = nodes.entries(entry, "a mapping of ssh settings") if not entry.is_null else {}
    if keys is None:
        return {}
    nodes.unknown_keys(keys, SSH_KEYS)
    out: dict[str, Any] = {}
    if "python" in keys:
        path = nodes.text(keys["python"], "the path of Python on the hosts")
        if path is not None and not path.startswith("/"):
            hint = "an absolute path on the hosts, e.g. /opt/venv/bin/python"
            nodes.problem(keys["python"].line, keys["python"].path, f"not absolute: {path}", hint)
        elif path is not None:
            out["python"] = path
    if "tunnel" in keys:
        out["tunnel"] = bool(nodes.flag(keys["tunnel"]))
    if "options" in keys:
        hint = 'e.g. options: ["-J", "jumphost"]'
        items = nodes.items(keys["options"], "a list of ssh options", hint) or ()
        out["options"] = tuple(t for t in (nodes.text(i, "an ssh option") for i in items) if t)
    return out


def _slurm(nodes: NodeReader, entry: Entry) -> dict[str, Any]:
    keys = nodes.entries(entry, "a mapping of Slurm settings") if not entry.is_null else {}
    if keys is None:
        return {}
    nodes.unknown_keys(keys, SLURM_KEYS)
    out: dict[str, Any] = {}
    for key in ("partition", "account", "qos", "constraint"):
        if key in keys:
            value = nodes.raw(keys[key])
            if value is None or not isinstance(keys[key].node, yaml.ScalarNode) or not value:
                nodes.expected(keys[key], "a name", f"e.g. {key}: gpu")
            else:
                out[key] = value
    if "cpus_per_task" in keys:
        out["cpus_per_task"] = nodes.whole(keys["cpus_per_task"], 1, "e.g. cpus_per_task: 8")
    if "gpus" in keys:
        out["gpus"] = nodes.whole(keys["gpus"], 0, "e.g. gpus: 1")
    if "mem" in keys:
        value = nodes.raw(keys["mem"])
        if value is None or not _MEM.fullmatch(value):
            nodes.expected(keys["mem"], "an amount of memory", "e.g. mem: 32G (K, M, G or T)")
        else:
            out["mem"] = value
    if "time" in keys:
        value = nodes.raw(keys["time"])
        minutes = slurm_minutes(value) if value is not None else None
        if minutes is None:
            hint = 'e.g. time: "02:00:00", "1-00:00:00" or 90 (minutes)'
            nodes.expected(keys["time"], "a Slurm time limit", hint)
        else:
            out["time"] = minutes
    if "setup" in keys:
        lines = []
        hint = 'e.g. setup: ["module load cuda/12.4"]'
        for item in nodes.items(keys["setup"], "a list of shell lines", hint) or ():
            line = nodes.text(item, "a shell line")
            if line is not None:
                lines.append(line)
        out["setup"] = tuple(lines)
    if "extra" in keys:
        extra: dict[str, str] = {}
        for name, item in (
            nodes.entries(keys["extra"], "a mapping of sbatch options") or {}
        ).items():
            value = nodes.raw(item)
            if not _SBATCH_OPTION.fullmatch(name):
                hint = "sbatch's long option without '--', e.g. reservation: mine"
                nodes.problem(item.line, item.path, f"invalid sbatch option {name!r}", hint)
            elif name.replace("-", "_") in SLURM_KEYS:
                hint = f"write it as slurm: {{{name.replace('-', '_')}: ...}}"
                nodes.problem(item.line, item.path, f"{name} has its own key", hint)
            elif value is None or not isinstance(item.node, yaml.ScalarNode):
                nodes.expected(item, "a single value", f"e.g. {name}: VALUE")
            else:
                extra[name] = value
        out["extra"] = MappingProxyType(extra)
    return {key: value for key, value in out.items() if value is not None}
