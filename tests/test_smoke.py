"""``envrunner smoke``, run as CI runs it: a real process on real environments, its table, its
exit code and its JUnit file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from junit_shape import check_junit

from envrunner import EnvSpec, load_manifest
from envrunner._runtime.smoke import import_names
from envrunner._smoke import requirement_names


def smoke(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "envrunner", "smoke", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def table(text: str) -> dict[tuple[str, str], tuple[str, str]]:
    """The smoke table's rows: (environment, check) -> (outcome, note)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ENVIRONMENT"))
    header = lines[start]
    check, outcome, note = (header.index(word) for word in ("CHECK", "OUTCOME", "NOTE"))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows[line[:check].strip(), line[check:outcome].strip()] = (
            line[outcome:].split()[0],
            line[note:].strip(),
        )
    return rows


def project(folder: Path, manifest: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "environments.yaml").write_text(textwrap.dedent(manifest))
    return folder


PASSING = """\
    version: 1
    environments:
      old:
        python: "3.9"
        requirements: ["six==1.15.0"]
        env: {SMOKE_FLAG: "from-manifest"}
        smoke:
          - "import six; assert six.__version__ == '1.15.0', six.__version__"
          - |
            import sys
            assert sys.version_info[:2] == (3, 9)
          - {run: "python -c 'import six, sys; assert sys.version_info[:2] == (3, 9)'"}
          - {run: "test \\"$SMOKE_FLAG\\" = from-manifest && test -f environments.yaml"}
          - {run: "exit 3", exit_code: 3}
      new:
        python: "3.12"
        requirements: ["six==1.16.0", "PyYAML==6.0.2", "tomli==2.0.1; python_version < '3.0'"]
"""


@pytest.fixture(scope="module")
def passing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return project(tmp_path_factory.mktemp("smoke-passing"), PASSING)


def test_every_check_passing_exits_0_with_a_table_and_a_junit_report(passing: Path) -> None:
    result = smoke("--junit-xml", "reports/smoke.xml", cwd=passing)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].split() == [
        "ENVIRONMENT",
        "CHECK",
        "OUTCOME",
        "TIME",
        "NOTE",
    ]
    rows = table(result.stdout)
    assert [outcome for (env, _), (outcome, _) in rows.items() if env == "old"] == ["passed"] * 6
    assert "Python 3.9." in rows["old", "setup"][1]
    assert "2 environments: 9 passed, 1 skipped in" in result.stdout
    outcomes = check_junit(passing / "reports" / "smoke.xml")
    assert {name: outcome for (env, name), outcome in outcomes.items() if env == "old"} == {
        "setup": "passed",
        "import six; assert six.__version__ == '1.15.0', six.__version__": "passed",
        "import sys ...": "passed",
        "$ python -c 'import six, sys; assert sys.version_info[:2] == (3, 9)'": "passed",
        '$ test "$SMOKE_FLAG" = from-manifest && test -f environments.yaml': "passed",
        "$ exit 3": "passed",
    }
    assert outcomes["new", "import tomli"] == "skipped"


def test_an_environment_without_checks_imports_each_requirement_by_its_import_name(
    passing: Path,
) -> None:
    rows = table(smoke("new", cwd=passing).stdout)
    assert rows["new", "import six"] == ("passed", "1.16.0: import six")
    assert rows["new", "import PyYAML"] == ("passed", "6.0.2: import yaml")
    outcome, note = rows["new", "import tomli"]
    assert outcome == "skipped" and "marker leaves it out" in note


def test_json_is_for_scripts_and_the_table_goes_to_stderr(passing: Path) -> None:
    result = smoke("old", "--json", cwd=passing)
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["passed"] is True
    assert data["counts"] == {"passed": 6, "failed": 0, "error": 0, "skipped": 0}
    (environment,) = data["environments"]
    assert environment["name"] == "old" and environment["python"].startswith("3.9.")
    assert [check["kind"] for check in environment["checks"]] == [
        "setup",
        "python",
        "python",
        "shell",
        "shell",
        "shell",
    ]
    assert "ENVIRONMENT" in result.stderr


def test_a_failing_check_fails_the_run_and_shows_why(tmp_path: Path) -> None:
    folder = project(
        tmp_path,
        """\
        version: 1
        environments:
          new:
            python: "3.12"
            requirements: ["six==1.16.0"]
            smoke:
              - |
                import six
                print("six says", six.__version__)
                assert six.__version__ == "1.15.0", "six is " + six.__version__
              - "x = 1; assert x == 2"
              - {run: "echo first words; echo last words; exit 4"}
              - "import six"
        """,
    )
    result = smoke("--junit-xml", "smoke.xml", cwd=folder)
    assert result.returncode == 1
    rows = table(result.stdout)
    assert rows["new", "import six ..."] == ("failed", "AssertionError: six is 1.16.0")
    assert rows["new", "x = 1; assert x == 2"] == ("failed", "AssertionError")
    assert rows["new", "$ echo first words; echo last words; exit 4"] == (
        "failed",
        "exit code 4, expected 0",
    )
    assert rows["new", "import six"][0] == "passed"
    failures = result.stdout.split("\nFAILURES\n", 1)[1]
    assert 'File "<smoke environments.yaml:7>", line 3, in <module>' in failures
    assert "| six says 1.16.0" in failures  # what the failed snippet printed
    assert "    x = 1; assert x == 2" in failures  # a bare assert shows its source line
    assert "last words" in failures
    assert "1 environment: 2 passed, 3 failed in" in result.stdout
    outcomes = check_junit(folder / "smoke.xml")
    assert [outcome for (_, _), outcome in outcomes.items()].count("failure") == 3


def test_an_unbuildable_environment_is_an_error_and_the_others_still_run(tmp_path: Path) -> None:
    folder = project(
        tmp_path,
        """\
        version: 1
        environments:
          broken:
            python: "3.12"
            requirements: ["envrunner-no-such-package-zz==1"]
            smoke: ["import zz"]
          fine:
            python: "3.12"
            requirements: ["six==1.16.0"]
        """,
    )
    result = smoke("--junit-xml", "smoke.xml", cwd=folder)
    assert result.returncode == 1
    rows = table(result.stdout)
    outcome, note = rows["broken", "setup"]
    assert outcome == "error" and "environment 'broken': installing" in note
    assert rows["broken", "import zz"] == ("skipped", "not run: the environment's setup failed")
    assert rows["fine", "setup"][0] == rows["fine", "import six"][0] == "passed"
    failures = result.stdout.split("\nFAILURES\n", 1)[1]
    assert "| " in failures and "envrunner-no-such-package-zz" in failures  # installer's lines
    assert "full log: " in failures
    outcomes = check_junit(folder / "smoke.xml")
    assert outcomes["broken", "setup"] == "error"
    assert outcomes["broken", "import zz"] == "skipped"
    assert outcomes["fine", "import six"] == "passed"


def test_environments_are_checked_at_the_same_time_up_to_jobs(tmp_path: Path) -> None:
    """Each environment's check waits for the other's: both pass only if they overlap."""
    wait = "touch {me}; for i in $(seq 600); do test -e {other} && exit 0; sleep 0.1; done; exit 1"
    folder = project(
        tmp_path,
        f"""\
        version: 1
        environments:
          old:
            python: "3.9"
            requirements: ["six==1.15.0"]
            smoke: [{{run: "{wait.format(me="old-here", other="new-here")}"}}]
          new:
            python: "3.12"
            requirements: ["six==1.16.0"]
            smoke: [{{run: "{wait.format(me="new-here", other="old-here")}"}}]
        """,
    )
    result = smoke("--jobs", "2", cwd=folder)
    assert result.returncode == 0, result.stdout


def test_a_hanging_check_is_stopped_at_the_environment_timeout(tmp_path: Path) -> None:
    folder = project(
        tmp_path,
        """\
        version: 1
        environments:
          new:
            python: "3.12"
            requirements: ["six==1.16.0"]
            timeout: 1
            smoke:
              - "import time; time.sleep(300)"
              - {run: "sleep 300"}
              - "import six"
        """,
    )
    result = smoke(cwd=folder)
    assert result.returncode == 1
    rows = table(result.stdout)
    assert rows["new", "import time; time.sleep(300)"][0] == "failed"
    assert "timeout" in rows["new", "import time; time.sleep(300)"][1]
    assert rows["new", "$ sleep 300"] == (
        "failed",
        "still running after 1s: killed (raise the environment's timeout:)",
    )
    assert rows["new", "import six"][0] == "passed"  # a new worker took over


def running(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_an_interrupted_run_stops_its_checks_at_once(tmp_path: Path) -> None:
    folder = project(
        tmp_path,
        """\
        version: 1
        environments:
          new:
            python: "3.12"
            requirements: ["six==1.16.0"]
            smoke: [{run: "echo $$ > pid; exec sleep 300"}, "import six"]
        """,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "envrunner", "smoke"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (folder / "pid").is_file() or not (folder / "pid").read_text().strip():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the shell check never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == 130
    assert "envrunner: interrupted" in stderr
    assert not running(int((folder / "pid").read_text()))


def test_bad_input_is_a_usage_error(passing: Path) -> None:
    result = smoke("olt", cwd=passing)
    assert result.returncode == 2
    assert "did you mean 'old'?" in result.stderr
    result = smoke("--jobs", "0", cwd=passing)
    assert result.returncode == 2
    assert "expected a whole number >= 1" in result.stderr


# --------------------------------------------------------------------------- the default check


def test_requirement_names_skip_paths_urls_options_and_constraints(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("Django>=4 ; python_version >= '3.8'  # web\n")
    (tmp_path / "pins.txt").write_text("urllib3==2.0\n")
    (tmp_path / "requirements.txt").write_text(
        "-r base.txt\n-c pins.txt\n--index-url https://example.org/simple\n"
        "numpy[extra]==2.0 \\\n    --hash=sha256:abc\n./local-package\n"
        "git+https://example.org/repo.git\nmylib @ https://example.org/mylib.whl\n"
        "dist/thing-1.0-py3-none-any.whl\n# a comment\nnumpy>=1\n"
    )
    (tmp_path / "environments.yaml").write_text(
        "version: 1\nenvironments:\n  a:\n    requirements: requirements.txt\n"
    )
    spec: EnvSpec = load_manifest(tmp_path / "environments.yaml")["a"]
    assert requirement_names(spec) == [("Django", True), ("numpy", False), ("mylib", False)]


class Distribution:
    """What importlib.metadata says about an installed distribution, for import_names."""

    def __init__(self, top_level: str | None = None, files: list[str] | None = None) -> None:
        self.top_level = top_level
        self.files = files

    def read_text(self, name: str) -> str | None:
        return self.top_level if name == "top_level.txt" else None


@pytest.mark.parametrize(
    ("distribution", "expected"),
    [
        (Distribution(top_level="_yaml\nyaml\n"), ["yaml"]),
        (Distribution(top_level="_cffi_backend\n"), ["_cffi_backend"]),
        (
            Distribution(
                files=[
                    "numpy/__init__.py",
                    "numpy.libs/libopenblas.so",
                    "numpy-2.0.dist-info/RECORD",
                    "../../bin/f2py",
                    "typing_extensions.py",
                    "_speedups.cpython-312-x86_64-linux-gnu.so",
                    "__pycache__/x.pyc",
                ]
            ),
            ["numpy", "typing_extensions"],
        ),
        (Distribution(files=["some_pkg-1.0.dist-info/METADATA"]), ["some_dist"]),
    ],
    ids=["top-level-txt", "only-private", "record", "name-fallback"],
)
def test_import_names_come_from_metadata_then_record_then_the_name(
    distribution: Any, expected: list[str]
) -> None:
    assert import_names(distribution, "some-dist") == expected


def test_import_names_of_the_worker_runtime() -> None:
    """Real metadata, in this interpreter: pyzmq is imported as zmq."""
    from importlib import metadata

    assert import_names(metadata.distribution("pyzmq"), "pyzmq") == ["zmq"]
    assert "msgpack" in import_names(metadata.distribution("msgpack"), "msgpack")
