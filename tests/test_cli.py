"""The command line, run as a user would: a real process, real output, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import run_cli


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with a manifest of two conflicting environments, built once."""
    folder = tmp_path_factory.mktemp("cli-project")
    (folder / "environments.yaml").write_text(
        "version: 1\n"
        "environments:\n"
        '  old:\n    python: "3.9"\n    requirements: ["six==1.15.0"]\n'
        '    env: {SECRET_TOKEN: "hunter2"}\n'
        '  new:\n    python: "3.12"\n    requirements: ["six==1.16.0"]\n'
    )
    result = run_cli("build", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


def test_build_finds_the_manifest_in_a_parent_folder_and_reuses_builds(project: Path) -> None:
    inner = project / "src" / "deep"
    inner.mkdir(parents=True, exist_ok=True)
    result = run_cli("build", cwd=inner)
    assert result.returncode == 0, result.stderr
    assert "old: already built at" in result.stdout
    assert "new: already built at" in result.stdout


def test_list_shows_every_environment_and_its_state(project: Path) -> None:
    result = run_cli("list", cwd=project)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PYTHON", "STATE", "SIZE", "PATH"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["old"][1].startswith("3.9.") and rows["old"][2] == "built"
    assert rows["new"][1].startswith("3.12.") and rows["new"][2] == "built"


def test_list_json_is_for_scripts(project: Path) -> None:
    data = json.loads(run_cli("list", "--json", cwd=project).stdout)
    states = {row["name"]: row["state"] for row in data["environments"]}
    assert states == {"old": "built", "new": "built"}
    assert all(row["size_bytes"] > 0 for row in data["environments"])


def test_a_changed_manifest_makes_an_environment_stale(project: Path, tmp_path: Path) -> None:
    manifest = project / "environments.yaml"
    original = manifest.read_text()
    try:
        manifest.write_text(original.replace("six==1.16.0", "six==1.14.0"))
        data = json.loads(run_cli("list", "--json", cwd=project).stdout)
        states = {row["name"]: row["state"] for row in data["environments"]}
        assert states == {"old": "built", "new": "stale"}
    finally:
        manifest.write_text(original)


def test_info_shows_packages_and_hides_variable_values(project: Path) -> None:
    result = run_cli("info", "old", cwd=project)
    assert result.returncode == 0
    assert "six==1.15.0  (requested)" in result.stdout
    assert "pyzmq==" in result.stdout and "(runtime)" in result.stdout
    assert "SECRET_TOKEN" in result.stdout and "hunter2" not in result.stdout
    data = json.loads(run_cli("info", "old", "--json", cwd=project).stdout)
    assert data["spec"]["env"] == ["SECRET_TOKEN"]
    assert {p["name"]: p["role"] for p in data["packages"]}["cloudpickle"] == "runtime"


def test_exec_runs_inside_and_passes_the_exit_code(project: Path, tmp_path: Path) -> None:
    result = run_cli("exec", "old", "--", "python", "-V", cwd=tmp_path)
    assert result.returncode == 2  # no manifest here: a usage error, said clearly
    assert "no envrunner manifest found" in result.stderr
    result = run_cli(
        "exec",
        "old",
        "--",
        "python",
        "-c",
        "import os, six, sys; print(six.__version__, os.environ['SECRET_TOKEN']); sys.exit(7)",
        cwd=project,
    )
    assert result.returncode == 7
    assert result.stdout.strip() == "1.15.0 hunter2"


def test_path_prints_the_folder(project: Path) -> None:
    result = run_cli("path", "new", cwd=project)
    assert result.returncode == 0
    assert (Path(result.stdout.strip()) / "bin" / "python").exists()


def test_unknown_environments_and_bad_manifests_are_usage_errors(project: Path) -> None:
    result = run_cli("info", "olt", cwd=project)
    assert result.returncode == 2
    assert "did you mean 'old'?" in result.stderr
    bad = project / "bad.yaml"
    bad.write_text("version: 1\nenvironments:\n  x:\n    workers: many\n    pythn: '3.12'\n")
    result = run_cli("list", "--manifest", str(bad))
    assert result.returncode == 2
    assert "bad.yaml:4: environments.x.workers" in result.stderr
    assert "bad.yaml:5: environments.x.pythn: unknown key (did you mean 'python'?)" in result.stderr


def test_a_failed_build_exits_1_and_the_others_still_build(tmp_path: Path) -> None:
    (tmp_path / "environments.yaml").write_text(
        "version: 1\nenvironments:\n"
        '  broken:\n    requirements: ["envrunner-no-such-package-zz==1"]\n'
        '  fine:\n    python: "3.12"\n    requirements: ["six==1.16.0"]\n'
    )
    result = run_cli("build", cwd=tmp_path)
    assert result.returncode == 1
    assert "environment 'broken': installing" in result.stderr
    assert "1 of 2 environments failed to build: broken" in result.stderr
    states = {
        row["name"]: row["state"]
        for row in json.loads(run_cli("list", "--json", cwd=tmp_path).stdout)["environments"]
    }
    assert states == {"broken": "missing", "fine": "built"}


def test_gc_is_a_dry_run_until_asked(tmp_path: Path) -> None:
    home = str(tmp_path / "home")  # a home of its own: gc must not touch the session's builds
    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    for folder, version in ((kept, "1.16.0"), (dropped, "1.14.0")):
        folder.mkdir()
        (folder / "environments.yaml").write_text(
            f'version: 1\nenvironments:\n  env:\n    python: "3.12"\n'
            f'    requirements: ["six=={version}"]\n'
        )
        assert run_cli("build", cwd=folder, home=home).returncode == 0
    kept_path = Path(run_cli("path", "env", cwd=kept, home=home).stdout.strip())
    dropped_path = Path(run_cli("path", "env", cwd=dropped, home=home).stdout.strip())
    partial = kept_path.parent / "0000partialbuild0000"
    partial.mkdir()
    dry = run_cli("gc", cwd=kept, home=home)
    assert dry.returncode == 0
    assert f"would remove {partial}" in dry.stdout and "partial build" in dry.stdout
    assert f"would remove {dropped_path}" in dry.stdout
    assert str(kept_path) not in dry.stdout
    assert partial.exists() and dropped_path.exists()
    also = run_cli("gc", "--also", str(dropped / "environments.yaml"), cwd=kept, home=home)
    assert str(dropped_path) not in also.stdout
    done = run_cli("gc", "--delete", cwd=kept, home=home)
    assert f"removing {dropped_path}" in done.stdout and f"removing {partial}" in done.stdout
    assert not dropped_path.exists() and not partial.exists() and kept_path.exists()


def test_a_missing_python_is_a_usage_error_for_build(tmp_path: Path) -> None:
    (tmp_path / "environments.yaml").write_text(
        'version: 1\nenvironments:\n  nope:\n    python: "3.99"\n'
    )
    result = run_cli("build", cwd=tmp_path)
    assert result.returncode == 2
    assert "no Python interpreter matches '3.99'" in result.stderr


def test_a_closed_pipe_is_not_an_error() -> None:
    result = subprocess.run(
        f"{sys.executable} -m envrunner schema | head -1",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout.strip() == "{"
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------- options and messages (#19)


def test_manifest_may_come_before_the_verb_as_with_git(project: Path, tmp_path: Path) -> None:
    manifest = str(project / "environments.yaml")
    for argv in (("--manifest", manifest, "list"), ("-m", manifest, "list")):
        result = run_cli(*argv, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert {line.split()[0] for line in result.stdout.splitlines()[1:]} == {"old", "new"}
    after = run_cli("list", "--manifest", manifest, cwd=tmp_path)
    assert after.returncode == 0 and after.stdout == result.stdout


def test_manifest_given_twice_or_to_a_verb_without_one_is_refused(
    project: Path, tmp_path: Path
) -> None:
    manifest = str(project / "environments.yaml")
    twice = run_cli("-m", manifest, "list", "-m", str(tmp_path / "other.yaml"), cwd=tmp_path)
    assert twice.returncode == 2 and "--manifest given twice" in twice.stderr
    same = run_cli("-m", manifest, "list", "-m", manifest, cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    schema = run_cli("-m", manifest, "schema", cwd=tmp_path)
    assert schema.returncode == 2 and "envrunner schema reads no manifest" in schema.stderr


def test_exec_takes_the_manifest_after_the_name_before_the_command(
    project: Path, tmp_path: Path
) -> None:
    manifest = str(project / "environments.yaml")
    code = "import six; print(six.__version__)"
    for where in (["-m", manifest], [f"--manifest={manifest}"]):
        result = run_cli("exec", "old", *where, "--", "python", "-c", code, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "1.15.0"
    before = run_cli("-m", manifest, "exec", "new", "--", "python", "-c", code, cwd=tmp_path)
    assert before.stdout.strip() == "1.16.0", before.stderr


def test_exec_options_in_the_wrong_place_say_where_they_go(project: Path) -> None:
    manifest = str(project / "environments.yaml")
    no_dashes = run_cli("exec", "old", "-m", manifest, "python", "-V", cwd=project)
    assert no_dashes.returncode == 2
    assert "-m after NAME: put exec's options before NAME or before --" in no_dashes.stderr
    unknown = run_cli("exec", "old", "--force", "--", "python", "-V", cwd=project)
    assert unknown.returncode == 2
    assert "unexpected --force between NAME and --" in unknown.stderr


def test_a_missing_manifest_file_says_file_not_found_and_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "cpu.yaml").write_text('version: 1\nenvironments:\n  a: {python: "3.12"}\n')
    (tmp_path / "notes.yaml").write_text("title: not a manifest\n")
    result = run_cli("list", "--manifest", "environment.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert f"file not found: {tmp_path / 'environment.yaml'}" in result.stderr
    assert "holds cpu.yaml: name one of them" in result.stderr
    assert "notes.yaml" not in result.stderr


def test_a_manifest_folder_without_the_usual_name_lists_its_manifests(tmp_path: Path) -> None:
    folder = tmp_path / "environments"
    folder.mkdir()
    for name in ("gpu.yaml", "cpu.yml"):
        (folder / name).write_text('version: 1\nenvironments:\n  a: {python: "3.12"}\n')
    result = run_cli("list", "--manifest", "environments/", cwd=tmp_path)
    assert result.returncode == 2
    assert "is a folder without environments.yaml or envrunner.yaml" in result.stderr
    assert "it holds environments/cpu.yml, environments/gpu.yaml" in result.stderr
    assert "--manifest environments/cpu.yml" in result.stderr


def test_a_clash_with_the_worker_runtime_says_where_the_pin_comes_from(tmp_path: Path) -> None:
    (tmp_path / "environments.yaml").write_text(
        "version: 1\nenvironments:\n"
        f'  clash:\n    python: "{sys.version_info[0]}.{sys.version_info[1]}"\n'
        '    requirements: ["pyzmq<20"]\n'
    )
    result = run_cli("build", "--quiet", cwd=tmp_path)
    assert result.returncode == 1
    assert "pyzmq>=25 is not from your requirements: envrunner's worker runtime" in result.stderr, (
        result.stderr
    )
    assert "loosen your pyzmq requirement to allow pyzmq>=25" in result.stderr
