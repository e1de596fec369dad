"""The CI recipes of examples/ci and docs/ci.md work: the workflow is a valid GitHub Actions
file whose own scripts build a matrix and smoke-test each environment, and the plain shell
script does the same in one go."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from junit_shape import check_junit

from envrunner import load_manifest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "examples" / "ci" / "github-actions.yml"
SMOKE_SH = ROOT / "examples" / "ci" / "smoke.sh"

TINY = """\
    version: 1
    environments:
      old:
        python: "3.9"
        requirements: ["six==1.15.0"]
        smoke: ["import six; assert six.__version__ == '1.15.0'"]
      new:
        python: "3.12"
        requirements: ["six==1.16.0"]
"""


def shell_environ() -> dict[str, str]:
    """This environment, with the envrunner command and a python first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def bash(script: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run a step's script as GitHub Actions runs it: bash -e with pipefail."""
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env={**shell_environ(), **extra},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def step(job: dict[str, Any], uses: str) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = [s for s in job["steps"] if str(s.get("uses", "")).startswith(uses)]
    return found


def test_the_workflow_lists_then_smoke_tests_one_job_per_environment(
    workflow: dict[Any, Any],
) -> None:
    triggers = workflow["on" if "on" in workflow else True]  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"push", "pull_request"}
    listing, smoke = workflow["jobs"]["list"], workflow["jobs"]["smoke"]
    assert listing["outputs"]["matrix"] == "${{ steps.list.outputs.matrix }}"
    (list_step,) = [s for s in listing["steps"] if s.get("id") == "list"]
    assert "envrunner list --json" in list_step["run"]
    assert smoke["needs"] == "list"
    assert smoke["strategy"]["matrix"] == "${{ fromJSON(needs.list.outputs.matrix) }}"
    assert smoke["strategy"]["fail-fast"] is False
    cache = step(smoke, "actions/cache@")
    assert cache["with"]["path"] == "~/.cache/envrunner"
    assert "hashFiles('environments.yaml', 'pylock.*.toml', '*.lock.txt')" in cache["with"]["key"]
    assert "${{ matrix.name }}" in cache["with"]["key"]
    (run,) = [s["run"] for s in smoke["steps"] if "envrunner smoke" in s.get("run", "")]
    upload = step(smoke, "actions/upload-artifact@")
    assert upload["if"] == "always()"
    assert f'--junit-xml "{upload["with"]["path"]}"' in run
    python_steps = [s for s in smoke["steps"] if str(s.get("uses", "")).startswith("actions/setup")]
    assert python_steps[0]["with"]["python-version"].startswith("${{ matrix.python }}")


def test_the_workflow_scripts_make_the_matrix_and_smoke_test_each_entry(
    workflow: dict[Any, Any], tmp_path: Path
) -> None:
    (tmp_path / "environments.yaml").write_text(textwrap.dedent(TINY))
    (list_step,) = [s for s in workflow["jobs"]["list"]["steps"] if s.get("id") == "list"]
    output = tmp_path / "github-output"
    result = bash(list_step["run"], tmp_path, GITHUB_OUTPUT=str(output))
    assert result.returncode == 0, result.stderr
    (line,) = output.read_text().splitlines()
    name, _, value = line.partition("=")
    assert name == "matrix"
    include = json.loads(value)["include"]
    assert include == [{"name": "old", "python": "3.9"}, {"name": "new", "python": "3.12"}]
    (run,) = [
        s["run"]
        for s in workflow["jobs"]["smoke"]["steps"]
        if "envrunner smoke" in s.get("run", "")
    ]
    assert "--locked" in run
    unlocked = bash(run.replace("${{ matrix.name }}", "new"), tmp_path)
    assert unlocked.returncode == 1 and "no lock file" in unlocked.stdout + unlocked.stderr
    assert bash("envrunner lock", tmp_path).returncode == 0  # the lock files a project commits
    for entry in include:
        result = bash(run.replace("${{ matrix.name }}", entry["name"]), tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        outcomes = check_junit(tmp_path / "reports" / f"smoke-{entry['name']}.xml")
        assert {suite for suite, _ in outcomes} == {entry["name"]}


def test_the_shell_recipe_smoke_tests_a_manifest_and_leaves_a_report(tmp_path: Path) -> None:
    (tmp_path / "environments.yaml").write_text(textwrap.dedent(TINY))
    assert bash("envrunner lock", tmp_path).returncode == 0
    report = tmp_path / "out" / "smoke.xml"
    result = bash(f"{SMOKE_SH} environments.yaml", tmp_path, SMOKE_REPORT=str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 environments: 4 passed in" in result.stdout
    assert (
        check_junit(report)[("old", "import six; assert six.__version__ == '1.15.0'")] == "passed"
    )
    (tmp_path / "failing.yaml").write_text(
        textwrap.dedent(TINY).replace("== '1.15.0'", "== '9.9.9'")
    )
    result = bash(f"{SMOKE_SH} failing.yaml", tmp_path, SMOKE_REPORT=str(report))
    assert result.returncode == 1
    assert "failed" in result.stdout and f"JUnit report: {report}" in result.stdout
    assert "failure" in check_junit(report).values()


def test_the_projects_ci_environments_cover_both_check_forms_and_the_default() -> None:
    manifest = load_manifest(ROOT / "environments" / "ci.yaml")
    checks = [check for spec in manifest for check in spec.smoke]
    assert any(check.code for check in checks) and any(check.run for check in checks)
    assert any(not spec.smoke for spec in manifest)
    pythons = {spec.python for spec in manifest}
    assert {"3.9", "3.12"} <= pythons
    assert "envrunner smoke --manifest environments/ci.yaml" in (ROOT / ".ci" / "run").read_text()
