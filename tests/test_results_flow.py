"""The whole flow of #16 as a user meets it, through a script run several times.

The script calls a ``@envrunner.task(cache=True)``; its manifest says ``records: true``. A file the
task appends to, in the worker, counts real runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"

MANIFEST = f"""\
version: 1
records: true
environments:
  app:
    python: "{MINOR}"
    requirements: ["six==1.16.0"]
"""

HELPERS = """\
def normalize(values):
    total = sum(values)
    return [v / total for v in values]
"""

SCRIPT = """\
from pathlib import Path

import envrunner

from helpers import normalize

RAN = str(Path(__file__).with_name("ran.txt"))


@envrunner.task(env="app", cache=True)
def evaluate(values):
    import six

    with open(RAN, "a") as out:
        out.write(six.__version__ + "\\n")
    return normalize(values)


manifest = Path(__file__).with_name("environments.yaml")
with envrunner.Runner(manifest):  # the manifest's records: true
    print(evaluate([1, 3]))
"""


@pytest.mark.slow
def test_a_script_run_again_reuses_recomputes_on_change_and_says_why(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "environments.yaml").write_text(MANIFEST)
    (project / "helpers.py").write_text(HELPERS)
    (project / "main.py").write_text(SCRIPT)
    environ = {
        **os.environ,
        "ENVRUNNER_CACHE": str(tmp_path / "cache"),
        "ENVRUNNER_RECORDS": str(tmp_path / "runs.sqlite"),
    }

    def run() -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "main.py"],
            cwd=project,
            env=environ,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def runs() -> list[str]:
        return (project / "ran.txt").read_text().split()

    first = run()
    assert first.stdout == "[0.25, 0.75]\n"
    assert "recomputing" not in first.stderr  # never stored before: nothing to explain
    assert runs() == ["1.16.0"]
    again = run()
    assert again.stdout == "[0.25, 0.75]\n"
    assert runs() == ["1.16.0"]  # the task ran once
    assert "recomputing" not in again.stderr

    (project / "helpers.py").write_text(HELPERS.replace("v / total", "2 * v / total"))
    edited = run()
    assert edited.stdout == "[0.5, 1.5]\n"
    # said on stderr by default, through the progress output
    assert "envrunner: app: recomputing evaluate(): helper normalize() changed since " in (
        edited.stderr
    )
    assert runs() == ["1.16.0", "1.16.0"]

    (project / "environments.yaml").write_text(MANIFEST.replace("1.16.0", "1.15.0"))
    upgraded = run()
    assert upgraded.stdout == "[0.5, 1.5]\n"
    assert "recomputing evaluate(): environment 'app': six 1.16.0 -> 1.15.0" in upgraded.stderr
    assert runs() == ["1.16.0", "1.16.0", "1.15.0"]

    listed = subprocess.run(
        [sys.executable, "-m", "envrunner", "runs", "--json"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    records = json.loads(listed.stdout)
    assert [r["cache"] for r in records] == ["miss", "miss", "hit", "miss"]
    assert all(r["outcome"] == "ok" for r in records)
    newest, before = records[0]["id"], records[1]["id"]
    diff = subprocess.run(
        [sys.executable, "-m", "envrunner", "runs", "diff", before[:8], newest[:8]],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "package: six 1.16.0 -> 1.15.0" in diff.stdout
    assert "code:" not in diff.stdout, diff.stdout  # the code did not change between those two


def test_errors_are_stored_only_when_the_task_asks(tmp_path: Path) -> None:
    from envrunner._cache import EnvFacts
    from envrunner._results import CallResults

    def divide(a: int, b: int) -> float:
        return a / b

    env = EnvFacts("app", "k", MINOR, {"six": "1.16.0"})
    results = CallResults(records=tmp_path / "runs.sqlite", cache_dir=tmp_path / "cache")
    failed = results.begin_call(divide, (1, 0), {}, env, cache=True)
    results.finish(failed, payload=b"encoded ZeroDivisionError", error=ZeroDivisionError())
    again = results.begin_call(divide, (1, 0), {}, env, cache=True, cache_errors=True)
    assert again.cache == "miss"  # the error was not stored
    results.finish(again, payload=b"encoded ZeroDivisionError", error=ZeroDivisionError())
    third = results.begin_call(divide, (1, 0), {}, env, cache=True, cache_errors=True)
    assert third.hit is not None and third.hit.error
    results.finish(third, error=ZeroDivisionError())
    off = results.begin_call(divide, (4, 2), {}, env, cache=False)
    results.finish(off, payload=b"2.0")
    assert results.cache.entries()[0].error and len(results.cache.entries()) == 1
    assert results.records is not None
    rows = results.records.list()
    assert [(r.cache, r.outcome) for r in rows] == [
        ("off", "ok"),
        ("hit", "error: ZeroDivisionError"),
        ("miss", "error: ZeroDivisionError"),
        ("miss", "error: ZeroDivisionError"),
    ]
    assert rows[0].arguments.keys() == {"a", "b"} and rows[0].cache_key is None
    results.close()
