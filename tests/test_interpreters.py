"""Finding interpreters: by version, by path, through pyenv and PATH, with a cache by file identity.

These tests use the interpreters this machine has (pyenv's versions folder); a test that needs
a version the machine lacks is skipped and says which.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from envrunner._interpreters import (
    MIN_VERSION,
    Interpreter,
    discover,
    find_interpreter,
    inspect_interpreter,
)
from envrunner._runtime.errors import InterpreterNotFoundError

PYENV_ROOT = Path(os.environ.get("PYENV_ROOT") or "~/.pyenv").expanduser()
SOURCES = {"explicit", "ENVRUNNER_PYTHONS", "pyenv", "uv", "PATH", "current"}


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test starts with an empty interpreter cache of its own."""
    home = tmp_path / "home"
    monkeypatch.setenv("ENVRUNNER_HOME", str(home))
    monkeypatch.delenv("ENVRUNNER_PYTHONS", raising=False)
    return home


def pyenv_versions() -> dict[tuple[int, ...], Path]:
    """pyenv's installs by version: (3, 12, 1) -> .../versions/3.12.1/bin/python3.12."""
    found: dict[tuple[int, ...], Path] = {}
    for folder in sorted(PYENV_ROOT.glob("versions/*")):
        match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", folder.name)
        if match:
            major, minor, _ = (int(part) for part in match.groups())
            executable = folder / "bin" / f"python{major}.{minor}"
            if executable.exists():
                found[tuple(int(part) for part in match.groups())] = executable
    return found


def pyenv_python(minor: str) -> Path:
    """The newest pyenv install of ``minor`` ("3.12"), or skip the test."""
    wanted = tuple(int(part) for part in minor.split("."))
    matches = [path for version, path in sorted(pyenv_versions().items()) if version[:2] == wanted]
    if not matches:
        pytest.skip(f"this machine has no Python {minor} in {PYENV_ROOT}/versions")
    return matches[-1]


@pytest.fixture(scope="module")
def venv312(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv made with pyenv's Python 3.12."""
    versions = [path for version, path in pyenv_versions().items() if version[:2] == (3, 12)]
    if not versions:
        pytest.skip(f"this machine has no Python 3.12 in {PYENV_ROOT}/versions")
    venv = tmp_path_factory.mktemp("venvs") / "py312"
    subprocess.run([str(versions[-1]), "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv


def run_counting_wrapper(tmp_path: Path, real: Path) -> tuple[Path, Path]:
    """An executable that appends a line to a counter file each time it runs, then runs ``real``."""
    counter = tmp_path / "runs.txt"
    wrapper = tmp_path / "counting-python"
    wrapper.write_text(f'#!/bin/sh\necho run >> "{counter}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, counter


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


# --------------------------------------------------------------------------- by version


def test_minor_version_finds_that_cpython() -> None:
    expected = pyenv_python("3.12")

    found = find_interpreter("3.12")

    assert found.version[:2] == (3, 12)
    assert found.minor == "3.12"
    assert found.implementation == "cpython"
    assert found.cache_tag == "cpython-312"
    assert found.full_version.startswith(".".join(map(str, found.version)))
    assert found.platform and found.prefix
    assert not found.is_venv
    assert found.path.is_absolute() and found.path.exists()
    assert found.source in SOURCES
    assert found.version >= tuple(int(p) for p in expected.parent.parent.name.split("."))


def test_major_version_finds_the_newest() -> None:
    newest_pyenv = max(pyenv_versions(), default=None)
    if newest_pyenv is None:
        pytest.skip(f"this machine has no Python in {PYENV_ROOT}/versions")

    found = find_interpreter("3")

    assert found.version >= newest_pyenv
    assert found.version == max(i.version for i in discover() if i.implementation == "cpython")


def test_oldest_supported_version_is_found() -> None:
    pyenv_python("3.9")

    assert find_interpreter("3.9").version[:2] == (3, 9)


def test_full_version_matches_that_release_only() -> None:
    expected = pyenv_python("3.12")
    release = expected.parent.parent.name  # "3.12.1"

    found = find_interpreter(release)

    assert ".".join(map(str, found.version)) == release


def test_version_request_prefers_interpreters_outside_virtualenvs(
    venv312: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVRUNNER_PYTHONS", str(venv312 / "bin"))  # searched first

    found = find_interpreter("3.12")

    assert not found.is_venv
    assert not found.path.is_relative_to(venv312)


@pytest.mark.parametrize("request_", ["3.99", "4"], ids=["unknown-minor", "4"])
def test_unmatched_version_lists_what_was_found(request_: str) -> None:
    with pytest.raises(InterpreterNotFoundError) as info:
        find_interpreter(request_)

    error = info.value
    assert error.request == request_
    assert error.found == tuple(i.describe() for i in discover())
    assert error.found, "this machine should have at least one Python 3.9+"
    message = str(error)
    assert f"no Python interpreter matches {request_!r}" in message
    assert all(line in message for line in error.found)
    assert "pyenv install" in message


@pytest.mark.parametrize("request_", ["3.8", "2.7", "2", "3.8.18"])
def test_version_below_3_9_says_workers_need_3_9(request_: str) -> None:
    with pytest.raises(InterpreterNotFoundError, match=r"workers need Python 3\.9 or newer"):
        find_interpreter(request_)


def test_an_installed_python_too_old_for_workers_is_listed_and_not_to_be_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = pyenv_python("3.7")
    monkeypatch.setenv("ENVRUNNER_PYTHONS", str(old.parent))
    with pytest.raises(InterpreterNotFoundError) as info:
        find_interpreter("3.7", env="legacy", where="environments.yaml:4")

    message = str(info.value)
    version = ".".join(old.parent.parent.name.split(".")[:3])
    assert f"Python {version} is installed, but workers need Python 3.9 or newer" in message
    assert f"{version} at {old} (ENVRUNNER_PYTHONS): too old for workers" in info.value.found
    newest = discover()[0].version
    assert f'Ask for Python 3.9 or newer in python:, such as "{newest[0]}.{newest[1]}"' in message
    assert "Install that version" not in message


def test_a_too_old_version_nobody_installed_says_what_to_ask_for() -> None:
    with pytest.raises(InterpreterNotFoundError) as info:
        find_interpreter("2.5")

    message = str(info.value)
    assert "workers need Python 3.9 or newer" in message and "is installed" not in message
    assert info.value.found == tuple(i.describe() for i in discover())
    assert "Ask for Python 3.9 or newer" in message and "Install that version" not in message


def test_error_names_the_environment_and_the_manifest_line() -> None:
    with pytest.raises(InterpreterNotFoundError) as info:
        find_interpreter("3.99", env="torch", where="environments.yaml:4")

    message = str(info.value)
    assert message.startswith("environment 'torch': no Python interpreter matches '3.99'")
    assert "asked by python: '3.99' at environments.yaml:4" in message
    assert info.value.env == "torch"


def test_nonsense_request_is_refused() -> None:
    with pytest.raises(InterpreterNotFoundError, match=r'expected a version such as "3\.12"'):
        find_interpreter("three")


# --------------------------------------------------------------------------- by path


def test_interpreter_path_is_used_as_given() -> None:
    real = pyenv_python("3.12")
    link = real.parent / "python3"  # pyenv's symlink to python3.12
    if not link.is_symlink():
        pytest.skip(f"{link} is not a symlink here")

    found = find_interpreter(str(link))

    assert found.path == link  # not resolved to python3.12
    assert found.source == "explicit"
    assert found.version[:2] == (3, 12)


def test_virtualenv_folder_means_its_bin_python(
    venv312: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = find_interpreter(str(venv312))

    assert found.path == venv312 / "bin" / "python"
    assert found.is_venv
    assert Path(found.prefix).resolve() == venv312.resolve()
    assert found.version[:2] == (3, 12)

    monkeypatch.chdir(venv312.parent)
    assert find_interpreter(f"./{venv312.name}").path == venv312 / "bin" / "python"


def test_pyenv_shim_of_an_inactive_version_gives_a_clear_error() -> None:
    shim = PYENV_ROOT / "shims" / "python3.12"
    if not shim.exists():
        pytest.skip(f"no pyenv shim at {shim}")
    if subprocess.run([str(shim), "-c", ""], capture_output=True, check=False).returncode == 0:
        pytest.skip("Python 3.12 is active in pyenv here, so its shim works")

    with pytest.raises(InterpreterNotFoundError) as info:
        find_interpreter(str(shim))

    message = str(info.value)
    assert "exit code 127" in message
    assert "it is a pyenv shim" in message
    assert f"use {PYENV_ROOT / 'versions'}/<version>/bin/python3.12 instead" in message


def test_missing_path_says_it_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(InterpreterNotFoundError, match=r"/nowhere/python is not there"):
        find_interpreter(str(tmp_path / "nowhere" / "python"))


def test_file_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "python"
    file.write_text("")

    with pytest.raises(InterpreterNotFoundError, match="is not executable"):
        inspect_interpreter(file)


def test_executable_that_is_not_python_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)

    with pytest.raises(InterpreterNotFoundError, match="did not answer as a Python interpreter"):
        inspect_interpreter(fake)


def test_folder_that_is_not_a_virtualenv_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InterpreterNotFoundError, match="folder without bin/python"):
        find_interpreter(str(tmp_path))


def test_interpreter_path_below_3_9_is_refused() -> None:
    old = pyenv_python("3.8")

    with pytest.raises(
        InterpreterNotFoundError, match=r"is Python 3\.8\.\d+; workers need"
    ) as info:
        find_interpreter(str(old))
    assert "Point python: at a Python 3.9 or newer" in str(info.value)
    assert "Install that version" not in str(info.value)


# --------------------------------------------------------------------------- discovery


def test_discovery_lists_each_usable_interpreter_once_newest_first() -> None:
    found = discover()

    assert found, "this machine should have at least one Python 3.9+"
    versions = [interpreter.version for interpreter in found]
    assert versions == sorted(versions, reverse=True)
    assert all(interpreter.version[:2] >= MIN_VERSION for interpreter in found)
    identities = [(os.path.realpath(i.path), i.prefix) for i in found]
    assert len(identities) == len(set(identities))
    assert all(interpreter.source in SOURCES for interpreter in found)
    for version, path in pyenv_versions().items():
        if version[:2] >= MIN_VERSION:
            assert any(i.version == version and i.source == "pyenv" for i in found), path


def test_discovery_skips_pyenv_shims() -> None:
    assert not [i for i in discover() if i.path.parent.name == "shims"]


def test_discovery_searches_ENVRUNNER_PYTHONS_first(
    venv312: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVRUNNER_PYTHONS", os.pathsep.join(["", str(venv312 / "bin")]))

    mine = [i for i in discover() if i.source == "ENVRUNNER_PYTHONS"]

    assert mine, "the virtualenv named in ENVRUNNER_PYTHONS was not found"
    assert all(i.is_venv and i.path.parent == venv312 / "bin" for i in mine)
    assert len(mine) == 1  # python3.12, python3 and python are one interpreter


def test_interpreter_running_the_tests_is_found() -> None:
    current = Path(getattr(sys, "_base_executable", "") or sys.executable)

    assert any(os.path.samefile(i.path, current) for i in discover() if i.path.exists())


def test_describe_says_version_path_and_source() -> None:
    interpreter = inspect_interpreter(pyenv_python("3.12"), source="pyenv")

    assert interpreter.describe() == (
        f"{'.'.join(map(str, interpreter.version))} at {interpreter.path} (pyenv)"
    )
    assert isinstance(interpreter, Interpreter)


# --------------------------------------------------------------------------- the cache


def test_second_inspect_of_an_unchanged_file_runs_nothing(tmp_path: Path) -> None:
    wrapper, counter = run_counting_wrapper(tmp_path, pyenv_python("3.12"))

    first = inspect_interpreter(wrapper)
    second = inspect_interpreter(wrapper, source="PATH")

    assert runs(counter) == 1
    assert second.version == first.version and second.prefix == first.prefix
    assert second.path == wrapper
    assert second.source == "PATH"  # where it was found is not cached


def test_changed_file_is_asked_again(tmp_path: Path) -> None:
    wrapper, counter = run_counting_wrapper(tmp_path, pyenv_python("3.12"))
    inspect_interpreter(wrapper)

    with wrapper.open("a") as stream:
        stream.write("# edited\n")  # new size
    inspect_interpreter(wrapper)
    stat = wrapper.stat()
    os.utime(wrapper, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**9))  # same size, new mtime
    inspect_interpreter(wrapper)

    assert runs(counter) == 3


def test_cache_is_a_json_file_in_the_home_folder(tmp_path: Path, _private_home: Path) -> None:
    wrapper, _ = run_counting_wrapper(tmp_path, pyenv_python("3.12"))
    inspect_interpreter(wrapper)

    assert sorted(path.name for path in _private_home.iterdir()) == ["interpreters.json"]
    data = json.loads((_private_home / "interpreters.json").read_text())
    entry = data["interpreters"][str(wrapper)]
    assert entry["size"] == wrapper.stat().st_size
    assert entry["mtime_ns"] == wrapper.stat().st_mtime_ns


def test_corrupt_cache_is_ignored_and_replaced(tmp_path: Path, _private_home: Path) -> None:
    wrapper, counter = run_counting_wrapper(tmp_path, pyenv_python("3.12"))
    _private_home.mkdir()
    (_private_home / "interpreters.json").write_text("{not json")

    inspect_interpreter(wrapper)
    inspect_interpreter(wrapper)

    assert runs(counter) == 1
    assert (
        str(wrapper)
        in json.loads((_private_home / "interpreters.json").read_text())["interpreters"]
    )


def test_warm_discovery_starts_no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    cold = discover()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("discovery ran an interpreter although the cache knew it")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    assert discover() == cold
    assert find_interpreter("3").version == cold[0].version


def test_a_tie_goes_to_the_place_searched_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENVRUNNER_PYTHONS is searched before pyenv: with the same version in both, it wins."""
    import shutil

    originals = sorted((Path.home() / ".pyenv" / "versions").glob("3.9.*/bin/python3.9"))
    if not originals:
        pytest.skip("no Python 3.9 under pyenv here")
    folder = tmp_path / "mine" / "bin"
    folder.mkdir(parents=True)
    copy = folder / "python3.9"
    shutil.copy2(originals[-1], copy)
    monkeypatch.setenv("ENVRUNNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ENVRUNNER_PYTHONS", str(folder))
    found = find_interpreter(".".join(map(str, inspect_interpreter(originals[-1]).version)))
    assert found.path == copy and found.source == "ENVRUNNER_PYTHONS"


def test_a_minor_version_runs_only_the_candidates_that_may_be_it(_private_home: Path) -> None:
    pyenv_python("3.12")
    found = find_interpreter("3.12")
    ran = json.loads((_private_home / "interpreters.json").read_text())["interpreters"]
    named = [Path(path).name for path in ran if re.fullmatch(r"python3\.\d+", Path(path).name)]
    assert named and set(named) == {"python3.12"}  # python3.11 and the others never ran
    # the same choice as from every interpreter on the machine
    everything = [i for i in discover() if i.implementation == "cpython" and i.minor == "3.12"]
    ranked = sorted(
        enumerate(everything), key=lambda item: (not item[1].is_venv, item[1].version, -item[0])
    )
    assert found.path == ranked[-1][1].path
