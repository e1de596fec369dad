"""Builds: content keys, the cache, locks, interrupted and failed builds, records, installers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tasks
from localpkg import builds, make_package
from support import WriteManifest, run_cli

import envrunner
from envrunner._build import build_folders
from envrunner._environments import build, read_record, resolve, state
from envrunner._manifest import load_manifest
from envrunner._progress import LogProgress

SIX_116_WHEEL_SHA256 = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"


def spec_of(path: Path, name: str = "env"):  # type: ignore[no-untyped-def]
    return load_manifest(path)[name]


# --------------------------------------------------------------------------- keys


def test_the_key_ignores_folder_order_names_and_variables(tmp_path: Path) -> None:
    one = tmp_path / "one" / "environments.yaml"
    two = tmp_path / "two" / "deeper" / "environments.yaml"
    one.parent.mkdir()
    two.parent.mkdir(parents=True)
    one.write_text(
        'version: 1\nenvironments:\n  env:\n    python: "3.12"\n'
        '    requirements: ["six==1.16.0", "attrs"]\n    env: {A: "1"}\n'
    )
    two.write_text(
        'version: 1\nenvironments:\n  other-name:\n    env: {A: "2"}\n'
        '    requirements: ["attrs", "six==1.16.0"]\n    python: "3.12"\n    workers: 3\n'
    )
    assert resolve(spec_of(one)).key == resolve(spec_of(two, "other-name")).key


@pytest.mark.parametrize(
    "change",
    [
        'requirements: ["six==1.15.0"]',
        'python: "3.9"',
        "installer: pip",
        "system_site_packages: true",
        "pip: {pre: true}",
    ],
    ids=["requirement", "python", "installer", "site-packages", "pip-option"],
)
def test_the_key_changes_with_what_changes_the_build(tmp_path: Path, change: str) -> None:
    base = (
        'version: 1\nenvironments:\n  env:\n    python: "3.12"\n    requirements: ["six==1.16.0"]\n'
    )
    first = tmp_path / "a.yaml"
    first.write_text(base)
    key, _, value = change.partition(": ")
    lines = [line for line in base.splitlines() if not line.strip().startswith(key + ":")]
    second = tmp_path / "b.yaml"
    second.write_text("\n".join([*lines, f"    {key}: {value}"]) + "\n")
    assert resolve(spec_of(first)).key != resolve(spec_of(second)).key


def test_the_key_follows_the_contents_of_requirements_files(tmp_path: Path) -> None:
    (tmp_path / "reqs.txt").write_text("-r base.txt\n")
    (tmp_path / "base.txt").write_text("six==1.16.0\n")
    manifest = tmp_path / "environments.yaml"
    manifest.write_text("version: 1\nenvironments:\n  env:\n    requirements: reqs.txt\n")
    before = resolve(spec_of(manifest)).key
    (tmp_path / "base.txt").write_text("six==1.15.0\n")
    assert resolve(spec_of(manifest)).key != before


# --------------------------------------------------------------------------- builds


@pytest.fixture(scope="module")
def six_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("six")
    path = folder / "environments.yaml"
    path.write_text(
        "version: 1\nenvironments:\n"
        '  old:\n    python: "3.9"\n    requirements: ["six==1.15.0"]\n'
        '  new:\n    python: "3.12"\n    requirements: ["six==1.16.0"]\n'
    )
    return path


def test_a_build_records_what_it_holds_and_a_second_build_reuses_it(six_manifest: Path) -> None:
    resolved = resolve(spec_of(six_manifest, "old"))
    record = build(resolved, manifest_path=six_manifest)
    assert state(resolved) == "built"
    roles = {p["name"].lower(): p["role"] for p in record["packages"]}
    assert roles["six"] == "requested"
    assert {roles["pyzmq"], roles["msgpack"], roles["cloudpickle"]} == {"runtime"}
    assert record["interpreter"]["version"].startswith("3.9.")
    assert record["key"] == resolved.key and record["build_seconds"] > 0
    assert "env" not in record["spec"]
    again = build(resolve(spec_of(six_manifest, "old")), manifest_path=six_manifest)
    assert again["built_at"] == record["built_at"]


def test_a_build_compiles_bytecode(six_manifest: Path) -> None:
    resolved = resolve(spec_of(six_manifest, "new"))
    build(resolved)
    site = next(resolved.path.glob("lib/python3.12/site-packages"))
    assert (site / "__pycache__").glob("six.cpython-312.pyc")
    assert list((site / "__pycache__").glob("six.cpython-312.pyc"))
    assert list((site / "zmq" / "__pycache__").glob("*.cpython-312.pyc"))


def test_conflicting_environments_hold_their_own_versions(six_manifest: Path) -> None:
    versions = {}
    for name in ("old", "new"):
        resolved = resolve(spec_of(six_manifest, name))
        build(resolved)
        output = subprocess.run(
            [str(resolved.python), "-c", "import six, sys; print(six.__version__)"],
            capture_output=True,
            text=True,
            check=True,
        )
        versions[name] = output.stdout.strip()
    assert versions == {"old": "1.15.0", "new": "1.16.0"}


def test_progress_names_each_step(tmp_path: Path, six_manifest: Path) -> None:
    log = tmp_path / "progress.txt"
    with log.open("w") as stream:
        build(resolve(spec_of(six_manifest, "new")), force=True, progress=LogProgress(stream))
    text = log.read_text()
    assert "envrunner: new: creating the virtualenv (Python 3.12" in text
    assert "envrunner: new: installing 1 requirement and the worker runtime" in text
    assert "envrunner: new: built in" in text


def test_a_failed_build_keeps_its_log_and_leaves_nothing(write_manifest: WriteManifest) -> None:
    path = write_manifest(
        "version: 1\nenvironments:\n  env:\n"
        '    requirements: ["envrunner-no-such-package-zz==9.9"]\n'
    )
    resolved = resolve(spec_of(path))
    with pytest.raises(envrunner.BuildError) as caught:
        build(resolved)
    error = caught.value
    assert error.env == "env" and error.step.startswith("installing")
    assert any("envrunner-no-such-package-zz" in line for line in error.tail)
    assert Path(error.log_path).is_file()
    assert "envrunner-no-such-package-zz" in Path(error.log_path).read_text()
    assert "last lines of the installer's output" in str(error)
    assert not resolved.path.exists()
    assert state(resolved) == "missing"


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_a_requirements_file_with_hashes_installs(
    write_manifest: WriteManifest, installer: str
) -> None:
    path = write_manifest(
        f"version: 1\nenvironments:\n  env:\n    requirements: pinned.txt\n"
        f"    installer: {installer}\n"
    )
    (path.parent / "pinned.txt").write_text(
        f"six==1.16.0 \\\n    --hash=sha256:{SIX_116_WHEEL_SHA256}\n"
    )
    record = build(resolve(spec_of(path)))
    versions = {p["name"].lower(): p["version"] for p in record["packages"]}
    assert versions["six"] == "1.16.0" and "pyzmq" in versions
    assert record["installer"] == installer


def test_virtualenv_and_pip_build_a_working_environment(write_manifest: WriteManifest) -> None:
    path = write_manifest(
        'version: 1\nenvironments:\n  env:\n    python: "3.12"\n    installer: pip\n'
        '    requirements: ["six==1.16.0"]\n'
    )
    with envrunner.Runner(path, progress=False) as runner:
        assert runner.call("env", tasks.identify)["six"] == "1.16.0"


# --------------------------------------------------------------------------- safety


def test_two_processes_asking_at_once_build_once(tmp_path: Path) -> None:
    package = make_package(tmp_path / "pkg", "onceonly")
    manifest = tmp_path / "environments.yaml"
    manifest.write_text(
        f'version: 1\nenvironments:\n  env:\n    requirements: ["onceonly @ file://{package}"]\n'
    )
    (package / "hold").touch()  # keep the first build busy until both processes are running
    first = subprocess.Popen(
        [sys.executable, "-m", "envrunner", "build", "-m", str(manifest)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (package / "started").exists():
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.02)
    second = subprocess.Popen(
        [sys.executable, "-m", "envrunner", "build", "-m", str(manifest)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    # the second process must be waiting on the lock before the first may finish
    waiting = ""
    assert second.stderr is not None
    while "waiting for another process" not in waiting:
        line = second.stderr.readline()
        assert line, "the second build ended without waiting for the first"
        waiting += line
    (package / "hold").unlink()
    _, err1 = first.communicate(timeout=120)
    _, err2 = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert builds(package) == 1
    assert "creating the virtualenv" in err1
    assert "creating the virtualenv" not in waiting + err2
    assert "built by another process" in err2


def test_a_build_killed_mid_install_is_never_used_and_is_rebuilt(tmp_path: Path) -> None:
    package = make_package(tmp_path / "pkg", "killedpkg")
    manifest = tmp_path / "environments.yaml"
    manifest.write_text(
        f'version: 1\nenvironments:\n  env:\n    requirements: ["killedpkg @ file://{package}"]\n'
    )
    (package / "hold").touch()
    build_process = subprocess.Popen(
        [sys.executable, "-m", "envrunner", "build", "-m", str(manifest)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (package / "started").exists():
        assert time.monotonic() < deadline and build_process.poll() is None
        time.sleep(0.02)
    os.killpg(build_process.pid, signal.SIGKILL)
    build_process.wait(timeout=30)
    resolved = resolve(spec_of(manifest))
    assert resolved.key is not None
    (half,) = build_folders(resolved.path.parent, resolved.key)  # the half-built one is there...
    assert read_record(half) is None  # ...but not marked complete, and not in use
    assert not resolved.path.exists()
    assert state(resolved) == "missing"
    (package / "hold").unlink()
    listed = run_cli("list", "--json", "-m", str(manifest))
    assert json.loads(listed.stdout)["environments"][0]["state"] == "missing"
    rebuilt = run_cli("build", "-m", str(manifest))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert state(resolved) == "built"
    check = subprocess.run(
        [str(resolved.python), "-c", "import killedpkg; print(killedpkg.VERSION)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.strip() == "1.0"


# --------------------------------------------------------------------------- used as they are


def test_an_existing_virtualenv_is_used_as_it_is(tmp_path: Path) -> None:
    python312 = _pyenv_python("3.12")
    venv = tmp_path / "venv"
    subprocess.run([python312, "-m", "venv", "--without-pip", str(venv)], check=True)
    manifest = tmp_path / "environments.yaml"
    manifest.write_text(f"version: 1\nenvironments:\n  mine:\n    python: {venv}\n")
    resolved = resolve(spec_of(manifest, "mine"))
    assert resolved.key is None and state(resolved) == "external"
    with envrunner.Runner(manifest, progress=False) as runner:
        assert runner.call("mine", tasks.prefix) == str(venv)
    site = venv / "lib" / "python3.12" / "site-packages"
    assert not any(site.glob("zmq*")), "the virtualenv was modified"


def _pyenv_python(version: str) -> str:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(root.glob(f"{version}.*/bin/python{version}"))
    if not found:
        pytest.skip(f"Python {version} is not installed under pyenv here")
    return str(found[-1])


def test_a_missing_interpreter_names_the_manifest_line(write_manifest: WriteManifest) -> None:
    path = write_manifest('version: 1\nenvironments:\n  env:\n    python: "3.99"\n')
    with pytest.raises(envrunner.InterpreterNotFoundError) as caught:
        resolve(spec_of(path))
    message = str(caught.value)
    assert "environments.yaml:4" in message and "3.99" in message
    assert "3.12" in message  # it lists what it found


def test_a_built_environment_whose_interpreter_is_gone_is_built_again(
    write_manifest: WriteManifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its record says built, but its python was deleted (or the Python it links to removed):
    a worker could never start; the next prepare builds it again, saying why (issue 20)."""
    import io

    monkeypatch.setenv("ENVRUNNER_HOME", str(tmp_path / "home"))  # this build alone is touched
    path = write_manifest("version: 1\nenvironments:\n  env:\n    requirements: []\n")
    resolved = resolve(spec_of(path))
    build(resolved)
    resolved.python.unlink()
    assert state(resolved) == "built"  # the record alone cannot tell
    stream = io.StringIO()
    with envrunner.Runner(path, progress=LogProgress(stream)) as runner:
        assert runner.call("env", sum, [1, 2]) == 3
    assert f"its interpreter {resolved.python} is gone" in stream.getvalue()
    assert resolved.python.exists()
