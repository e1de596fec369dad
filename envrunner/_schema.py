"""A JSON Schema of the manifest, for editors (``envrunner schema``).

May import: the standard library.

The loader (``_manifest.py``) is the authority: it checks more than a schema can (files that
exist, interpreters, line numbers in messages). This schema lets an editor complete keys and flag
mistakes as you type; a test keeps its keys and the loader's the same.
"""

from __future__ import annotations

from typing import Any

__all__ = ["manifest_schema"]

_SECONDS_OR_NULL = {"type": ["number", "null"]}
_NAME = {"type": ["string", "number"], "minLength": 1}
_LAUNCH: dict[str, Any] = {
    "launcher": {
        "enum": ["local", "slurm", "ssh"],
        "default": "local",
        "description": "Where the workers run: child processes here, Slurm jobs (with slurm:), "
        "or other machines over ssh (with hosts:). See docs/cluster.md.",
    },
    "slurm": {
        "type": "object",
        "description": "Slurm settings of launcher: slurm (each worker is one job).",
        "additionalProperties": False,
        "properties": {
            "partition": _NAME,
            "account": _NAME,
            "qos": _NAME,
            "constraint": _NAME,
            "cpus_per_task": {"type": "integer", "minimum": 1},
            "gpus": {"type": "integer", "minimum": 0},
            "mem": {"type": ["string", "integer"], "pattern": "^[0-9]+[KMGT]?$"},
            "time": {
                "type": ["string", "integer"],
                "description": 'A time limit: "HH:MM:SS", "D-HH:MM:SS" or minutes.',
            },
            "setup": {"type": "array", "items": {"type": "string"}},
            "extra": {
                "type": "object",
                "description": "Other sbatch options (long names without '--').",
                "propertyNames": {"pattern": "^[a-z][a-z0-9_-]*$"},
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
        },
    },
    "hosts": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "minLength": 1},
        "description": "The machines of launcher: ssh (names as ssh knows them).",
    },
    "ssh": {
        "type": "object",
        "description": "Settings of launcher: ssh.",
        "additionalProperties": False,
        "properties": {
            "python": {"type": "string", "pattern": "^/", "description": "Python on the hosts."},
            "tunnel": {
                "type": "boolean",
                "default": False,
                "description": "Connect back "
                "through the ssh connection (ssh -R), for hosts that cannot reach you.",
            },
            "options": {"type": "array", "items": {"type": "string"}},
        },
    },
}


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07, as VS Code's YAML extension reads it) of a version 1 manifest."""
    settings: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "python": {
                "type": ["string", "number"],
                "description": 'A Python version ("3.12", newest patch wins) or the path of an '
                "interpreter or virtualenv (relative to the manifest). Default: the running "
                "Python's version. A path with no requirements is used as it is.",
                "examples": ["3.12", "3.9", "./venv/bin/python"],
            },
            "requirements": {
                "description": "Requirement strings, or the path of a requirements file "
                "(relative to the manifest; -r, -c and --hash lines work).",
                "oneOf": [
                    {"type": "array", "items": {"type": "string", "minLength": 1}},
                    {"type": "string", "minLength": 1},
                ],
                "examples": [["numpy>=2", "six==1.16.0"], "requirements/torch.txt"],
            },
            "env": {
                "type": "object",
                "description": "Environment variables set in the workers (values as written).",
                "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
            "workers": {
                "type": "integer",
                "minimum": 1,
                "default": 1,
                "description": "The most calls at once in this environment.",
            },
            "pip": {
                "type": "object",
                "description": "Installer options that change what gets installed.",
                "additionalProperties": False,
                "properties": {
                    "index_url": {"type": ["string", "null"]},
                    "extra_index_urls": {"type": "array", "items": {"type": "string"}},
                    "find_links": {"type": "array", "items": {"type": "string"}},
                    "pre": {"type": "boolean", "default": False},
                },
            },
            "system_site_packages": {
                "type": "boolean",
                "default": False,
                "description": "Let the environment see its interpreter's own packages.",
            },
            "installer": {
                "enum": ["auto", "uv", "pip"],
                "default": "auto",
                "description": "auto: uv when installed, else virtualenv + pip.",
            },
            "smoke": {
                "type": "array",
                "description": "Checks for envrunner smoke: Python snippets run in a worker, "
                "or shell commands with their expected exit code.",
                "items": {
                    "oneOf": [
                        {"type": "string", "minLength": 1},
                        {
                            "type": "object",
                            "required": ["run"],
                            "additionalProperties": False,
                            "properties": {
                                "run": {"type": "string", "minLength": 1},
                                "exit_code": {"type": "integer", "default": 0},
                            },
                        },
                    ]
                },
            },
            "timeout": {
                **_SECONDS_OR_NULL,
                "exclusiveMinimum": 0,
                "description": "Seconds one call may run before its worker is killed.",
            },
            "idle_timeout": {
                **_SECONDS_OR_NULL,
                "minimum": 0,
                "description": "Seconds an idle worker lives before it exits.",
            },
            "max_calls": {
                "type": ["integer", "null"],
                "minimum": 1,
                "description": "Calls a worker serves before a fresh one replaces it.",
            },
            "lock": {
                "type": "string",
                "minLength": 1,
                "pattern": "(^|/)pylock(\\.[^./]+)?\\.toml$|\\.txt$",
                "description": "A lock file to build from (pylock.toml, or a requirements file "
                "with hashes); envrunner lock writes it when requirements are given.",
            },
            "build_timeout": {
                **_SECONDS_OR_NULL,
                "exclusiveMinimum": 0,
                "description": "Seconds a build may take before it is stopped.",
            },
            **_LAUNCH,
        },
    }
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "envrunner manifest (version 1)",
        "description": "Named Python environments for envrunner: environments.yaml.",
        "type": "object",
        "required": ["version", "environments"],
        "additionalProperties": False,
        "properties": {
            "version": {"const": 1, "description": "The manifest format: 1."},
            "records": {
                "type": ["boolean", "string"],
                "description": "Record every call in the call records (envrunner runs): true "
                "for the default database, or its path (relative to this file).",
            },
            "defaults": {
                **settings,
                "description": "Merged into every environment (env and pip key by key).",
            },
            "environments": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
                "additionalProperties": {"anyOf": [settings, {"type": "null"}]},
            },
        },
    }
