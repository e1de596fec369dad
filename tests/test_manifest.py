"""The manifest loader: YAML to frozen dataclasses, and every mistake reported with file:line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest

from envrunner._manifest import (
    EnvSpec,
    Location,
    Manifest,
    PipOptions,
    SmokeCheck,
    find_manifest,
    load_manifest,
)
from envrunner._runtime.errors import (
    ManifestError,
    ManifestNotFoundError,
    UnknownEnvironmentError,
)

RUNNING_MINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages show paths relative to the current folder: run each test in its tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENVRUNNER_MANIFEST", raising=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> ManifestError:
    manifest = write(tmp_path / "environments.yaml", text)
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    return info.value


def executable(path: Path) -> Path:
    write(path, "#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------- valid manifests


@pytest.mark.parametrize(
    ("written", "expected"),
    [("", False), ("records: false", False), ("records: true", True), ("records:", False)],
)
def test_records_is_off_unless_asked_for(tmp_path: Path, written: str, expected: bool) -> None:
    manifest = write(
        tmp_path / "environments.yaml", f"version: 1\n{written}\nenvironments:\n  a:\n"
    )
    assert load_manifest(manifest).records is expected


def test_a_records_path_is_relative_to_the_manifest(tmp_path: Path) -> None:
    manifest = write(
        tmp_path / "sub" / "environments.yaml",
        "version: 1\nrecords: runs/calls.sqlite\nenvironments:\n  a:\n",
    )
    assert load_manifest(manifest).records == tmp_path / "sub" / "runs" / "calls.sqlite"


def test_full_manifest_loads_into_dataclasses_with_defaults_merged(tmp_path: Path) -> None:
    write(tmp_path / "requirements" / "tf.txt", "tensorflow==2.17\n")
    manifest_path = write(
        tmp_path / "environments.yaml",
        """
        version: 1
        defaults:
          workers: 2
          env: {SHARED: "1", OMP_NUM_THREADS: 4}
          pip: {index_url: "https://pypi.example/simple", find_links: [wheels]}
        environments:
          torch:
            python: 3.10
            requirements: [torch==2.13.0, "numpy>=2"]
            env: {OMP_NUM_THREADS: 8, FLAG: yes, EMPTY: ""}
            pip: {pre: true, extra_index_urls: ["https://download.example/cu121"]}
            installer: uv
            timeout: 600
            idle_timeout: 0
          tf:
            python: "3.12"
            requirements: requirements/tf.txt
            workers: 3
            system_site_packages: true
            smoke:
              - "import tensorflow"
              - {run: "python -c 'print(1)'", exit_code: 3}
              - {run: "true"}
            timeout: null
        """,
    )

    manifest = load_manifest("environments.yaml")

    assert manifest.path == tmp_path / "environments.yaml" == manifest_path
    assert manifest.path.is_absolute()
    assert manifest.version == 1
    assert list(manifest.environments) == ["torch", "tf"]
    assert len(manifest) == 2 and "torch" in manifest and "nope" not in manifest
    assert [spec.name for spec in manifest] == ["torch", "tf"]
    file = manifest.path

    torch = manifest["torch"]
    assert torch == EnvSpec(
        name="torch",
        location=Location(file, 7),
        python="3.10",  # as written: not the float 3.1
        python_path=None,
        requirements=("torch==2.13.0", "numpy>=2"),
        env={"SHARED": "1", "OMP_NUM_THREADS": "8", "FLAG": "yes", "EMPTY": ""},
        workers=2,
        pip=PipOptions(
            index_url="https://pypi.example/simple",
            extra_index_urls=("https://download.example/cu121",),
            find_links=(str(tmp_path / "wheels"),),
            pre=True,
        ),
        installer="uv",
        timeout=600.0,
        idle_timeout=0.0,
        locations=torch.locations,
    )
    assert torch.external is False
    assert torch.where("python") == Location(file, 8)
    assert torch.where("workers") == Location(file, 3)  # came from defaults
    assert torch.where("env.SHARED") == Location(file, 4)
    assert torch.where("env.OMP_NUM_THREADS") == Location(file, 10)
    assert torch.where("pip.index_url") == Location(file, 5)
    assert torch.where("pip.pre") == Location(file, 11)
    assert torch.where("smoke") == torch.location  # not written: the environment's own line
    assert str(torch.where("installer")) == f"{file}:12"

    tf = manifest["tf"]
    assert tf.python == "3.12"
    assert tf.requirements == ()
    assert tf.requirements_file == tmp_path / "requirements" / "tf.txt"
    assert tf.requirement_files == (tmp_path / "requirements" / "tf.txt",)
    assert tf.env == {"SHARED": "1", "OMP_NUM_THREADS": "4"}
    assert tf.workers == 3
    assert tf.system_site_packages is True
    assert tf.installer == "auto"
    assert tf.timeout is None
    assert tf.idle_timeout is None
    assert tf.pip == PipOptions("https://pypi.example/simple", (), (str(tmp_path / "wheels"),))
    assert tf.smoke == (
        SmokeCheck(Location(file, 21), code="import tensorflow"),
        SmokeCheck(Location(file, 22), run="python -c 'print(1)'", exit_code=3),
        SmokeCheck(Location(file, 23), run="true", exit_code=0),
    )


def test_loaded_manifest_cannot_be_changed(tmp_path: Path) -> None:
    write(
        tmp_path / "environments.yaml",
        """
        version: 1
        environments:
          a: {env: {X: "1"}}
        """,
    )
    manifest = load_manifest(tmp_path / "environments.yaml")
    spec = manifest["a"]

    assert isinstance(manifest.environments, MappingProxyType)
    assert isinstance(spec.env, MappingProxyType)
    assert isinstance(spec.locations, MappingProxyType)
    with pytest.raises(TypeError):
        spec.env["X"] = "2"  # type: ignore[index]
    with pytest.raises(TypeError):
        manifest.environments["b"] = spec  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.workers = 5  # type: ignore[misc]


def test_environment_without_settings_gets_running_python_and_defaults(tmp_path: Path) -> None:
    write(
        tmp_path / "environments.yaml",
        """
        version: 1
        defaults: {workers: 4}
        environments:
          bare:
        """,
    )
    spec = load_manifest(tmp_path / "environments.yaml")["bare"]

    assert spec.python == RUNNING_MINOR
    assert spec.python_path is None
    assert spec.workers == 4
    assert spec.requirements == () and spec.requirements_file is None
    assert spec.location.line == 4


def test_defaults_merge_mappings_key_by_key_and_replace_everything_else(tmp_path: Path) -> None:
    write(
        tmp_path / "environments.yaml",
        """
        version: 1
        defaults:
          requirements: [six]
          smoke: ["import six"]
          env: {A: "1", B: "1"}
        environments:
          own:
            requirements: [numpy]
            env: {B: "2"}
          inherits: {}
        """,
    )
    manifest = load_manifest(tmp_path / "environments.yaml")

    assert manifest["own"].requirements == ("numpy",)  # replaced, not appended
    assert manifest["own"].env == {"A": "1", "B": "2"}  # merged, the environment wins
    assert manifest["own"].where("requirements").line == 8
    assert manifest["inherits"].requirements == ("six",)
    assert manifest["inherits"].where("requirements").line == 3
    assert [check.code for check in manifest["own"].smoke] == ["import six"]


def test_python_path_is_made_absolute_without_resolving_symlinks(tmp_path: Path) -> None:
    target = executable(tmp_path / "real" / "python3.12")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(target)
    write(
        tmp_path / "project" / "environments.yaml",
        f"""
        version: 1
        environments:
          relative:
            python: ../bin/python
          absolute:
            python: {target}
        """,
    )
    manifest = load_manifest(tmp_path / "project" / "environments.yaml")

    relative = manifest["relative"]
    assert relative.python == "../bin/python"
    assert relative.python_path == tmp_path / "project" / ".." / "bin" / "python"
    assert relative.python_path.is_symlink()
    assert relative.external  # an interpreter with no requirements is used as it is
    assert manifest["absolute"].python_path == target


def test_python_virtualenv_folder_means_its_bin_python(tmp_path: Path) -> None:
    executable(tmp_path / "venv" / "bin" / "python")
    write(
        tmp_path / "environments.yaml",
        """
        version: 1
        environments:
          existing:
            python: ./venv
            requirements: [requests]
        """,
    )
    spec = load_manifest(tmp_path / "environments.yaml")["existing"]

    assert spec.python == "./venv"
    assert spec.python_path == tmp_path / "venv" / "bin" / "python"
    assert spec.external is False  # it has requirements: it gets built


def test_home_folder_paths_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    executable(tmp_path / "home" / "py" / "bin" / "python")
    write(tmp_path / "home" / "reqs.txt", "six\n")
    write(
        tmp_path / "environments.yaml",
        """
        version: 1
        environments:
          mine: {python: ~/py, requirements: ~/reqs.txt}
        """,
    )
    spec = load_manifest(tmp_path / "environments.yaml")["mine"]

    assert spec.python_path == tmp_path / "home" / "py" / "bin" / "python"
    assert spec.requirements_file == tmp_path / "home" / "reqs.txt"


def test_find_links_urls_are_kept_and_local_paths_made_absolute(tmp_path: Path) -> None:
    write(
        tmp_path / "conf" / "environments.yaml",
        """
        version: 1
        environments:
          a:
            pip:
              find_links: [wheels, /abs/wheels, "https://example.org/links"]
        """,
    )
    spec = load_manifest(tmp_path / "conf" / "environments.yaml")["a"]

    assert spec.pip.find_links == (
        str(tmp_path / "conf" / "wheels"),
        "/abs/wheels",
        "https://example.org/links",
    )


def test_yaml_anchors_and_merge_keys_are_followed(tmp_path: Path) -> None:
    write(
        tmp_path / "environments.yaml",
        """
        version: 1
        environments:
          base: &base
            workers: 2
            requirements: [six]
          derived:
            <<: *base
            workers: 5
        """,
    )
    manifest = load_manifest(tmp_path / "environments.yaml")

    assert manifest["derived"].workers == 5
    assert manifest["derived"].requirements == ("six",)


def test_loading_starts_no_subprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executable(tmp_path / "venv" / "bin" / "python")
    write(
        tmp_path / "environments.yaml",
        """
        version: 1
        environments:
          a: {python: "3.12", requirements: [six]}
          b: {python: ./venv}
        """,
    )

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_manifest started a subprocess")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    assert len(load_manifest(tmp_path / "environments.yaml")) == 2


def test_unknown_environment_suggests_the_closest_name(tmp_path: Path) -> None:
    write(
        tmp_path / "environments.yaml",
        """
        version: 1
        environments:
          torch: {}
          tf: {}
        """,
    )
    manifest = load_manifest(tmp_path / "environments.yaml")

    with pytest.raises(UnknownEnvironmentError, match="did you mean 'torch'") as info:
        manifest["troch"]
    assert isinstance(info.value, LookupError)
    assert "environments.yaml" in str(info.value)
    assert repr(manifest) == f"<Manifest {str(manifest.path)!r} environments=['torch', 'tf']>"


# --------------------------------------------------------------------------- problems

ERRORS = [
    pytest.param(
        """
        version: 1
        environments:
          torch:
            pyton: "3.12"
        """,
        "environments.yaml:4: environments.torch.pyton: unknown key (did you mean 'python'?)",
        id="unknown-key-suggests-nearest",
    ),
    pytest.param(
        """
        version: 1
        enviroments:
          torch: {}
        """,
        "environments.yaml:2: enviroments: unknown key (did you mean 'environments'?)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {zzz: 1}
        """,
        "environments.yaml:3: environments.torch.zzz: unknown key (valid keys: python, ",
        id="unknown-key-without-near-match-lists-valid-keys",
    ),
    pytest.param(
        """
        version: 1
        defaults:
          worker: 2
        environments:
          torch: {}
        """,
        "environments.yaml:3: defaults.worker: unknown key (did you mean 'workers'?)",
        id="unknown-key-in-defaults",
    ),
    pytest.param(
        """
        environments:
          torch: {}
        """,
        "environments.yaml:1: version: missing (add 'version: 1' as the first line)",
        id="version-missing",
    ),
    pytest.param(
        """
        version: 2
        environments:
          torch: {}
        """,
        "environments.yaml:1: version: unsupported manifest version 2: "
        "this envrunner reads version 1 (write 'version: 1')",
        id="version-unsupported",
    ),
    pytest.param(
        """
        version: "1"
        environments:
          torch: {}
        """,
        "environments.yaml:1: version: expected the number 1, got '1' (write 'version: 1')",
        id="version-quoted",
    ),
    pytest.param(
        """
        version: 1
        """,
        "environments.yaml:1: environments: missing (declare at least one, e.g. environments: ",
        id="environments-missing",
    ),
    pytest.param(
        """
        version: 1
        environments: [torch, tf]
        """,
        "environments.yaml:2: environments: expected a mapping of names to settings, got a list",
        id="environments-not-a-mapping",
    ),
    pytest.param(
        """
        version: 1
        environments: {}
        """,
        "environments.yaml:2: environments: no environments declared",
        id="environments-empty",
    ),
    pytest.param(
        """
        version: 1
        environments:
        """,
        "environments.yaml:2: environments: no environments declared",
        id="environments-null",
    ),
    pytest.param(
        """
        - version: 1
        """,
        "environments.yaml:1: expected a mapping with 'version:' and 'environments:', got a list",
        id="top-level-not-a-mapping",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {python: "3.12"
          tf: {}
        """,
        "environments.yaml:4: invalid YAML: while parsing a flow mapping expected ',' or '}'",
        id="yaml-syntax-error",
    ),
    pytest.param(
        "version: 1\nenvironments:\n\ttorch: {}\n",
        "environments.yaml:3: invalid YAML: while scanning for the next token found character "
        "'\\t' that cannot start any token (indent with spaces: YAML does not allow tabs)",
        id="yaml-tab-indentation",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {}
        ---
        version: 1
        """,
        "environments.yaml:4: invalid YAML: expected a single document in the stream but found "
        "another document (keep one document: remove the '---' line and what follows it)",
        id="yaml-two-documents",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            workers: 1
            requirements: [six]
            workers: 2
        """,
        "environments.yaml:6: environments.torch.workers: duplicate key: written on lines 4 and 6"
        " (keep one of them: YAML would silently use the last)",
        id="duplicate-key",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {}
          tf: {}
          torch: {workers: 2}
        """,
        "environments.yaml:5: environments.torch: duplicate key: written on lines 3 and 5",
        id="duplicate-environment",
    ),
    pytest.param(
        """
        version: 1
        version: 1
        environments: {a: {}}
        """,
        "environments.yaml:2: version: duplicate key: written on lines 1 and 2",
        id="duplicate-top-level-key",
    ),
    pytest.param(
        """
        version: 1
        environments:
          a:
            env: {X: "1", X: "2"}
        """,
        "environments.yaml:4: environments.a.env.X: duplicate key: written twice on line 4",
        id="duplicate-key-in-flow-mapping",
    ),
    pytest.param(
        """
        version: 1
        environments:
          my env: {}
        """,
        "environments.yaml:3: environments.my env: invalid environment name 'my env' (use up to "
        "64 letters, digits, '.', '_' or '-', starting with a letter or digit: names become "
        "folder names and log prefixes)",
        id="environment-name-with-space",
    ),
    pytest.param(
        """
        version: 1
        environments:
          _private: {}
        """,
        "environments.yaml:3: environments._private: invalid environment name '_private'",
        id="environment-name-leading-underscore",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: "3.12"
        """,
        "environments.yaml:3: environments.torch: expected a mapping of settings, got '3.12'",
        id="environment-not-a-mapping",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {workers: two}
        """,
        "environments.yaml:3: environments.torch.workers: expected a whole number >= 1, "
        "got 'two' (e.g. 'workers: 2')",
        id="workers-word",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {workers: 0}
        """,
        "environments.yaml:3: environments.torch.workers: expected a whole number >= 1, got 0",
        id="workers-zero",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {workers: true}
        """,
        "environments.yaml:3: environments.torch.workers: expected a whole number >= 1, got true",
        id="workers-bool-is-not-a-number",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {workers: 1.5}
        """,
        "environments.yaml:3: environments.torch.workers: expected a whole number >= 1, got 1.5",
        id="workers-fraction",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {timeout: 0}
        """,
        "environments.yaml:3: environments.torch.timeout: expected a number of seconds > 0 or "
        "null, got 0 (e.g. 'timeout: 600', or null)",
        id="timeout-zero",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {timeout: yes}
        """,
        "environments.yaml:3: environments.torch.timeout: expected a number of seconds > 0 or "
        "null, got yes",
        id="timeout-bool",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {idle_timeout: -1}
        """,
        "environments.yaml:3: environments.torch.idle_timeout: expected a number of seconds >= 0"
        " or null, got -1",
        id="idle-timeout-negative",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {python: three}
        """,
        'environments.yaml:3: environments.torch.python: expected a version such as "3.12" or '
        "a path to an interpreter, got 'three' (a path contains '/' or starts with '~' or '.', "
        "e.g. ./venv/bin/python)",
        id="python-word",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {python: python3.12}
        """,
        'environments.yaml:3: environments.torch.python: expected a version such as "3.12" or '
        "a path to an interpreter, got 'python3.12' (write \"3.12\")",
        id="python-command-name",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {python: [3.12]}
        """,
        'environments.yaml:3: environments.torch.python: expected a version such as "3.12" or '
        "a path to an interpreter, got a list",
        id="python-list",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            python:
        """,
        'environments.yaml:4: environments.torch.python: expected a version such as "3.12" or '
        "a path to an interpreter, got nothing (null) (remove the key to use the running "
        "Python's version)",
        id="python-null",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {python: ./no/such/python}
        """,
        "environments.yaml:3: environments.torch.python: './no/such/python' does not exist "
        "(looked for {tmp}/no/such/python; relative paths start from the manifest's folder)",
        id="python-path-missing",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {python: ./}
        """,
        "environments.yaml:3: environments.torch.python: './' is a folder without bin/python: "
        "not a virtualenv (point python: at a virtualenv folder or at an interpreter)",
        id="python-folder-not-a-virtualenv",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {python: ./environments.yaml}
        """,
        "environments.yaml:3: environments.torch.python: './environments.yaml' is not "
        "executable (chmod +x {tmp}/environments.yaml)",
        id="python-path-not-executable",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {requirements: reqs/torch.txt}
        """,
        "environments.yaml:3: environments.torch.requirements: requirements file "
        "'reqs/torch.txt' not found (looked for torch.txt in {tmp}/reqs)",
        id="requirements-file-missing",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {requirements: numpy}
        """,
        "environments.yaml:3: environments.torch.requirements: requirements file 'numpy' not "
        "found (looked for numpy in {tmp}; for a single requirement write "
        "'requirements: [numpy]')",
        id="requirements-single-string-is-a-file",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            requirements:
              - six
              - ""
        """,
        "environments.yaml:6: environments.torch.requirements[1]: empty requirement "
        "(remove the item)",
        id="requirement-empty",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            requirements:
              - |
                six
                numpy
        """,
        "environments.yaml:5: environments.torch.requirements[0]: a requirement must fit on one "
        "line (write one requirement per list item)",
        id="requirement-multi-line",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            requirements: [six, 5]
        """,
        "environments.yaml:4: environments.torch.requirements[1]: expected a requirement string "
        'such as "numpy>=2", got 5',
        id="requirement-not-a-string",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            requirements: {six: 1}
        """,
        "environments.yaml:4: environments.torch.requirements: expected a list of requirement "
        "strings or the path of a requirements file, got a mapping",
        id="requirements-mapping",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch: {installer: pipx}
        """,
        "environments.yaml:3: environments.torch.installer: unknown installer 'pipx' "
        "(did you mean 'pip'? valid: auto, uv, pip)",
        id="installer-unknown",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            env:
              1BAD: x
        """,
        "environments.yaml:5: environments.torch.env.1BAD: invalid variable name '1BAD' "
        "(use letters, digits and '_', not starting with a digit)",
        id="env-name-invalid",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            env:
              TOKEN:
        """,
        "environments.yaml:5: environments.torch.env.TOKEN: no value "
        "(write 'TOKEN: \"\"' for an empty value, or remove the line)",
        id="env-value-null",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            env: {PATHS: [a, b]}
        """,
        "environments.yaml:4: environments.torch.env.PATHS: expected a single value, got a list",
        id="env-value-list",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            env: {FOO: "a\\0b"}
        """,
        "environments.yaml:4: environments.torch.env.FOO: a value cannot hold a NUL byte "
        "(\\0): no process can be given it (remove it)",
        id="env-value-nul",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            env: [A=1]
        """,
        "environments.yaml:4: environments.torch.env: expected a mapping of variable names to "
        "values, got a list",
        id="env-not-a-mapping",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            smoke:
              - "import torch"
              - 5
        """,
        "environments.yaml:6: environments.torch.smoke[1]: expected a Python snippet (a string) "
        "or a mapping {run: COMMAND, exit_code: 0}, got 5",
        id="smoke-item-number",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            smoke: "import torch"
        """,
        "environments.yaml:4: environments.torch.smoke: expected a list of checks, got "
        "'import torch'",
        id="smoke-not-a-list",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            smoke:
              - {run: "true", exit_code: "0"}
        """,
        "environments.yaml:5: environments.torch.smoke[0].exit_code: expected a whole number "
        "(exit status), got '0'",
        id="smoke-exit-code-string",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            smoke:
              - {exit_code: 1}
        """,
        "environments.yaml:5: environments.torch.smoke[0]: missing 'run:'",
        id="smoke-mapping-without-run",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            smoke:
              - {run: "true", exitcode: 1}
        """,
        "environments.yaml:5: environments.torch.smoke[0].exitcode: unknown key "
        "(did you mean 'exit_code'?)",
        id="smoke-mapping-unknown-key",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            pip: {index: "https://x"}
        """,
        "environments.yaml:4: environments.torch.pip.index: unknown key "
        "(did you mean 'index_url'?)",
        id="pip-unknown-key",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            pip: {extra_index_urls: "https://x"}
        """,
        "environments.yaml:4: environments.torch.pip.extra_index_urls: expected a list, got "
        "'https://x' (write 'extra_index_urls: [...]')",
        id="pip-list-given-a-string",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            pip: {pre: maybe}
        """,
        "environments.yaml:4: environments.torch.pip.pre: expected true or false, got 'maybe'",
        id="pip-pre-not-bool",
    ),
    pytest.param(
        """
        version: 1
        environments:
          torch:
            system_site_packages: 1
        """,
        "environments.yaml:4: environments.torch.system_site_packages: expected true or false, "
        "got 1",
        id="system-site-packages-number",
    ),
    pytest.param(
        """
        version: 1
        records: 3
        environments:
          a:
        """,
        "environments.yaml:2: records: expected true, false or a database path, got 3",
        id="records-number",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_problem_names_file_line_key_and_hint(tmp_path: Path, text: str, expected: str) -> None:
    error = load_error(tmp_path, text)

    assert expected.replace("{tmp}", str(tmp_path)) in str(error)
    assert all(problem.line > 0 for problem in error.problems)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
        version: 1
        environments:
          torch:
            pyton: "3.12"
            workers: 0
          tf:
            installer: conda
            env: {A: }
        """,
    )

    assert [(p.line, p.key) for p in error.problems] == [
        (4, "environments.torch.pyton"),
        (5, "environments.torch.workers"),
        (7, "environments.tf.installer"),
        (8, "environments.tf.env.A"),
    ]
    assert str(error).startswith("environments.yaml has 4 problems:\n  environments.yaml:4: ")
    assert error.path == "environments.yaml"
    assert isinstance(error, ValueError)


def test_a_wrong_default_is_reported_once_not_per_environment(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
        version: 1
        defaults:
          workers: -1
        environments:
          a: {}
          b: {}
        """,
    )

    assert [(p.line, p.key) for p in error.problems] == [(3, "defaults.workers")]


@pytest.mark.parametrize(
    "text", ["", "\n\n", "# only a comment\n"], ids=["empty", "blank", "comment"]
)
def test_empty_manifest_is_a_problem(tmp_path: Path, text: str) -> None:
    (tmp_path / "environments.yaml").write_text(text, encoding="utf-8")

    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "environments.yaml")

    assert str(info.value) == (
        "environments.yaml:1: the manifest is empty "
        "(start it with 'version: 1' and an 'environments:' mapping)"
    )


def test_messages_show_paths_outside_the_current_folder_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write(tmp_path / "conf" / "environments.yaml", "version: 1\nenvironments: {}\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")

    with pytest.raises(ManifestError, match=f"^{manifest}:2: environments: no environments"):
        load_manifest(manifest)


# --------------------------------------------------------------------------- requirements files


def test_requirements_file_includes_are_followed_in_order(tmp_path: Path) -> None:
    reqs = tmp_path / "reqs"
    write(
        reqs / "main.txt",
        """
        # pinned by pip-compile
        -r common.txt
        --constraint constraints.txt
        numpy==2.1.0 \\
            --hash=sha256:0123456789abcdef \\
            --hash=sha256:fedcba9876543210
        --requirement=nested/extra.txt  # trailing comment
        -rcommon.txt
        """,
    )
    write(reqs / "common.txt", "-r main.txt\nrequests==2.32.3 --hash=sha256:abc\n")
    write(reqs / "constraints.txt", "urllib3<3\n")
    write(reqs / "nested" / "extra.txt", "-c ../constraints.txt\n-c deeper.txt\nsix\n")
    write(reqs / "nested" / "deeper.txt", "idna<4\n")
    write(
        tmp_path / "environments.yaml",
        """
        version: 1
        environments:
          pinned: {requirements: reqs/main.txt}
        """,
    )

    spec = load_manifest(tmp_path / "environments.yaml")["pinned"]

    assert spec.requirements == ()
    assert spec.requirements_file == reqs / "main.txt"
    assert spec.requirement_files == (
        reqs / "main.txt",
        reqs / "common.txt",
        reqs / "constraints.txt",
        reqs / "nested" / "extra.txt",
        reqs / "nested" / "deeper.txt",
    )


def test_missing_included_file_is_reported_where_it_is_included(tmp_path: Path) -> None:
    write(tmp_path / "reqs" / "main.txt", "six\n-r common.txt\n")
    write(tmp_path / "reqs" / "common.txt", "requests \\\n  --hash=sha256:abc\n-c gone.txt\n")
    error = load_error(
        tmp_path,
        """
        version: 1
        environments:
          a: {requirements: reqs/main.txt}
        """,
    )

    assert str(error) == (
        "reqs/common.txt:3: environments.a.requirements: -c gone.txt: file not found "
        f"(looked for gone.txt in {tmp_path / 'reqs'})"
    )
    (problem,) = error.problems
    assert (problem.file, problem.line) == ("reqs/common.txt", 3)


# --------------------------------------------------------------------------- discovery


def test_explicit_manifest_wins_over_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = write(tmp_path / "chosen.yaml", "")
    configured = write(tmp_path / "configured.yaml", "")
    write(tmp_path / "environments.yaml", "")
    monkeypatch.setenv("ENVRUNNER_MANIFEST", str(configured))

    assert find_manifest("chosen.yaml") == explicit
    assert find_manifest(explicit) == explicit


def test_explicit_folder_means_the_manifest_inside_it(tmp_path: Path) -> None:
    inside = write(tmp_path / "project" / "envrunner.yaml", "")

    assert find_manifest(tmp_path / "project") == inside


def test_environment_variable_wins_over_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured = write(tmp_path / "configured.yaml", "")
    write(tmp_path / "environments.yaml", "")
    monkeypatch.setenv("ENVRUNNER_MANIFEST", str(configured))

    assert find_manifest() == configured


def test_environments_yaml_wins_over_envrunner_yaml(tmp_path: Path) -> None:
    first = write(tmp_path / "environments.yaml", "")
    write(tmp_path / "envrunner.yaml", "")

    assert find_manifest() == first


def test_envrunner_yaml_is_found_when_alone(tmp_path: Path) -> None:
    only = write(tmp_path / "envrunner.yaml", "")

    assert find_manifest() == only


def test_nearest_parent_folder_with_a_manifest_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "environments.yaml", "")
    nearer = write(tmp_path / "project" / "envrunner.yaml", "")
    deep = tmp_path / "project" / "src" / "pkg"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)

    assert find_manifest() == nearer
    assert find_manifest(start=tmp_path / "project" / "src") == nearer


def test_explicit_manifest_that_does_not_exist_is_named(tmp_path: Path) -> None:
    write(tmp_path / "environments.yaml", "")  # never used instead

    with pytest.raises(ManifestNotFoundError) as info:
        find_manifest("missing.yaml")

    assert str(tmp_path / "missing.yaml") in str(info.value)
    assert info.value.searched == (str(tmp_path / "missing.yaml"),)


def test_environment_variable_naming_a_missing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "environments.yaml", "")
    monkeypatch.setenv("ENVRUNNER_MANIFEST", str(tmp_path / "gone.yaml"))

    with pytest.raises(ManifestNotFoundError, match="ENVRUNNER_MANIFEST="):
        find_manifest()


def test_nothing_found_lists_every_place_searched(tmp_path: Path) -> None:
    start = tmp_path / "a" / "b"
    start.mkdir(parents=True)

    with pytest.raises(ManifestNotFoundError) as info:
        find_manifest(start=start)

    searched = info.value.searched
    assert searched[:4] == (
        str(start / "environments.yaml"),
        str(start / "envrunner.yaml"),
        str(start.parent / "environments.yaml"),
        str(start.parent / "envrunner.yaml"),
    )
    assert searched[-2:] == ("/environments.yaml", "/envrunner.yaml")
    assert "create environments.yaml" in str(info.value)


def test_load_of_a_missing_file_raises_not_found(tmp_path: Path) -> None:
    with pytest.raises(ManifestNotFoundError, match=r"file not found: .*nope\.yaml"):
        load_manifest(tmp_path / "nope.yaml")


def test_found_manifest_loads(tmp_path: Path) -> None:
    write(tmp_path / "environments.yaml", "version: 1\nenvironments: {a: {}}\n")

    manifest = load_manifest(find_manifest())

    assert isinstance(manifest, Manifest)
    assert list(manifest.environments) == ["a"]
    assert os.path.isabs(manifest.path)


def test_a_named_manifest_that_is_not_there_says_file_not_found(tmp_path: Path) -> None:
    write(tmp_path / "gpu.yaml", "version: 1\nenvironments: {}\n")
    with pytest.raises(ManifestNotFoundError) as info:
        find_manifest("cpu.yaml")

    message = str(info.value)
    assert f"file not found: {tmp_path / 'cpu.yaml'}" in message
    assert "holds gpu.yaml: name one of them" in message
    assert info.value.searched == (str(tmp_path / "cpu.yaml"),)
    with pytest.raises(ManifestNotFoundError, match=r"the folder .*nowhere does not exist"):
        load_manifest(tmp_path / "nowhere" / "environments.yaml")


def test_a_named_folder_lists_the_manifests_it_holds(tmp_path: Path) -> None:
    write(tmp_path / "envs" / "train.yaml", "version: 1\nenvironments: {}\n")
    write(tmp_path / "envs" / "serve.yml", "version: 1\nenvironments: {}\n")
    write(tmp_path / "envs" / "settings.yaml", "colour: blue\n")
    with pytest.raises(ManifestNotFoundError) as info:
        find_manifest("envs")

    message = str(info.value)
    assert "is a folder without environments.yaml or envrunner.yaml" in message
    assert "it holds envs/serve.yml, envs/train.yaml" in message
    assert "settings.yaml" not in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestNotFoundError, match=r"create environments\.yaml in that folder"):
        find_manifest(empty)


def test_a_script_run_from_another_folder_is_pointed_at_the_manifest_beside_it(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    manifest = write(project / "environments.yaml", "version: 1\nenvironments: {}\n")
    script = write(
        project / "job.py",
        """
        import envrunner
        try:
            envrunner.find_manifest()
        except envrunner.ManifestNotFoundError as exc:
            print(exc)
        """,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environ = {k: v for k, v in os.environ.items() if k != "ENVRUNNER_MANIFEST"}
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=elsewhere,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert f"your script has one beside it: {manifest}" in result.stdout
    assert f"run from {project}" in result.stdout
    assert f"ENVRUNNER_MANIFEST={manifest}" in result.stdout
