"""Saved calls: ``task.save`` in one process, ``envrunner run`` in another, as a user does it."""

from __future__ import annotations

import json
import pickle
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support import run_cli

import envrunner
from envrunner._cli import main

MANIFEST = """\
version: 1
environments:
  old:
    python: "3.9"
    requirements: ["six==1.15.0"]
  new:
    python: "3.12"
    requirements: ["six==1.16.0"]
    workers: 2
"""

STEPS = '''\
import sys
import time
from pathlib import Path
from typing import Any

import envrunner


@envrunner.task(env="new")
def double(x):
    import six

    return {"value": 2 * x, "six": six.__version__, "python": list(sys.version_info[:2])}


@envrunner.task(env="new")
def fail(x):
    raise ValueError(f"no good: {x}")


@envrunner.task(env="new")
def meet(folder, me, other, patience):
    """Arrive, then wait (up to patience seconds) until the other call has arrived too."""
    Path(folder, me).touch()
    deadline = time.monotonic() + patience
    while not Path(folder, other).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{me} waited {patience}s for {other}: they did not run at once")
        time.sleep(0.01)
    return me
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("saved-project")
    (folder / "environments.yaml").write_text(MANIFEST)
    (folder / "steps.py").write_text(STEPS)
    return folder


def save(project: Path, folder: Path, body: str) -> None:
    """Run a script that saves calls into ``folder``, in a process of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    script = project / f"save_{folder.name}.py"
    script.write_text("import sys\nimport envrunner\nimport steps\n\n" + textwrap.dedent(body))
    done = run_cli_python(script, folder, cwd=project)
    assert done.returncode == 0, done.stderr


def run_cli_python(script: Path, *args: Path, cwd: Path) -> Any:
    import subprocess

    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def outcome(call: Path) -> dict[str, Any]:
    return json.loads(call.with_name(call.name + ".outcome.json").read_text())  # type: ignore[no-any-return]


def result(call: Path) -> Any:
    with open(call.with_name(call.name + ".result"), "rb") as file:
        return pickle.load(file)


def test_a_call_saved_in_one_process_runs_from_the_cli_in_another(
    project: Path, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    save(
        project,
        calls,
        """
        @envrunner.task(env="old")
        def scripted(x):  # in the script, for another Python: it travels as source
            return {"x": x, "python": list(sys.version_info[:2])}

        steps.double.save(sys.argv[1] + "/double.call", 21)
        scripted.save(sys.argv[1] + "/scripted.call", x=5)
        """,
    )
    elsewhere = tmp_path / "elsewhere"  # no manifest here: the one it was saved from is used
    elsewhere.mkdir()
    done = run_cli("run", str(calls / "double.call"), str(calls / "scripted.call"), cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert result(calls / "double.call") == {"value": 42, "six": "1.16.0", "python": [3, 12]}
    assert result(calls / "scripted.call") == {"x": 5, "python": [3, 9]}
    first = outcome(calls / "double.call")
    assert first["ok"] is True and first["task"] == "steps.double" and first["env"] == "new"
    assert first["key_used"] == first["key_saved"] and first["result"] == "double.call.result"
    assert "2 of 2 calls succeeded" in done.stderr


def test_a_failing_call_exits_1_says_why_and_the_others_still_run(
    project: Path, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    save(
        project,
        calls,
        """
        steps.fail.save(sys.argv[1] + "/bad.call", "x")
        steps.double.save(sys.argv[1] + "/good.call", 1)
        """,
    )
    (calls / "bad.call.result").write_bytes(b"an older run's value")
    done = run_cli("run", str(calls / "bad.call"), str(calls / "good.call"), cwd=tmp_path)
    assert done.returncode == 1
    assert "failed" in done.stdout and "ValueError: no good: x" in done.stdout
    bad = outcome(calls / "bad.call")
    assert bad["ok"] is False
    assert bad["error"]["type"] == "ValueError" and bad["error"]["message"] == "no good: x"
    assert "in fail" in bad["error"]["traceback"]  # the worker's traceback
    assert not (calls / "bad.call.result").exists()  # the older value is not this run's
    assert result(calls / "good.call")["value"] == 2
    assert "1 of 2 calls succeeded" in done.stderr


def test_jobs_run_at_once_with_j2_and_one_at_a_time_with_j1(project: Path, tmp_path: Path) -> None:
    """Each call arrives, then waits for the other: both succeed only when they run at once."""
    met, alone = tmp_path / "met", tmp_path / "alone"
    for folder, patience in ((met, 120), (alone, 1)):
        save(
            project,
            folder / "calls",
            f"""
            where = sys.argv[1]
            steps.meet.save(where + "/a.call", where, "a", "b", {patience})
            steps.meet.save(where + "/b.call", where, "b", "a", {patience})
            """,
        )
    both = sorted(str(p) for p in (met / "calls").glob("*.call"))
    done = run_cli("run", "-j", "2", *both, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [result(Path(p)) for p in both] == ["a", "b"]

    one_by_one = sorted(str(p) for p in (alone / "calls").glob("*.call"))
    done = run_cli("run", "-j", "1", *one_by_one, cwd=tmp_path)
    assert done.returncode == 1  # a waited alone and gave up; then b found a there
    assert outcome(Path(one_by_one[0]))["error"]["type"] == "TimeoutError"
    assert result(Path(one_by_one[1])) == "b"


@pytest.fixture
def saved_call(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A call saved in this process (no worker needed to save one)."""
    monkeypatch.syspath_prepend(str(project))
    import steps  # type: ignore[import-not-found]

    with envrunner.Runner(project / "environments.yaml", progress=False):
        return steps.double.save(tmp_path / "double.call", 3)  # type: ignore[no-any-return]


def test_save_makes_missing_folders_and_names_a_path_it_cannot_write(
    saved_call: Path, project: Path, tmp_path: Path
) -> None:
    import steps

    with envrunner.Runner(project / "environments.yaml", progress=False):
        made = steps.double.save(tmp_path / "calls" / "lr0.1" / "double.call", 4)
        assert made.read_bytes().startswith(b"#envrunner-call ")
        blocked = tmp_path / "a-file"
        blocked.write_text("not a folder")
        with pytest.raises(envrunner.EnvrunnerError, match=r"cannot save the call of .*a-file"):
            steps.double.save(blocked / "double.call", 4)
    assert sorted(p.name for p in (tmp_path / "calls" / "lr0.1").iterdir()) == ["double.call"]


def test_a_file_from_a_newer_format_says_upgrade(
    saved_call: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = saved_call.read_bytes().replace(b'"format": 1', b'"format": 99', 1)
    saved_call.write_bytes(data)
    assert main(["run", str(saved_call)]) == 1
    out = capsys.readouterr().out
    assert "saved-call format 99" in out and "pip install -U envrunner-py" in out
    assert outcome(saved_call)["ok"] is False


def test_a_file_that_is_no_saved_call_says_how_to_make_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    assert main(["run", str(other)]) == 1
    assert "is not a saved call" in capsys.readouterr().out


def test_a_missing_environment_names_the_manifest_and_the_way_out(
    saved_call: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "other.yaml"
    elsewhere.write_text('version: 1\nenvironments:\n  old:\n    python: "3.9"\n')
    assert main(["run", "-m", str(elsewhere), str(saved_call)]) == 1
    out = capsys.readouterr().out
    assert "environment 'new'" in out and "does not declare" in out and "(it has: old)" in out
    assert '"requirements": ["six==1.16.0"]' in out  # the saved entry, to add back


def test_a_changed_entry_says_what_differs_and_how_to_fix_it(
    saved_call: Path, project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changed = tmp_path / "changed.yaml"
    changed.write_text(MANIFEST.replace("six==1.16.0", "six==1.17.0"))
    assert main(["run", "-m", str(changed), str(saved_call)]) == 1
    out = capsys.readouterr().out
    assert "requirements: saved ['six==1.16.0'], now ['six==1.17.0']" in out
    assert "--allow-changed" in out and "save the call again" in out


def test_keep_refs_and_futures_cannot_be_saved(saved_call: Path, project: Path) -> None:
    import steps

    with envrunner.Runner(project / "environments.yaml", progress=False):
        with pytest.raises(ValueError, match="keep=True cannot be saved"):
            steps.double.options(keep=True).save(saved_call, 1)
        kept = steps.double.options(keep=True)(1)
        with pytest.raises(envrunner.EncodeError, match=r"cannot be saved.*ref\.fetch\(\)"):
            steps.double.save(saved_call, kept)
        pending = steps.double.submit(2)
        with pytest.raises(envrunner.EncodeError, match=r"hold a future.*future\.result\(\)"):
            steps.double.save(saved_call, pending)
        assert pending.result()["value"] == 4


def test_no_calls_at_once_is_a_usage_error(
    saved_call: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "-j", "0", str(saved_call)]) == 2
    assert "give 1 or more" in capsys.readouterr().err


def test_j_gives_n_workers_to_environments_that_do_not_set_workers(project: Path) -> None:
    from envrunner._cli_run import _widened
    from envrunner._manifest import load_manifest

    widened = _widened(load_manifest(project / "environments.yaml"), 3)
    assert widened["old"].workers == 3  # not set in the manifest: -j decides
    assert widened["new"].workers == 2  # workers: 2 written there: a limit kept


def test_on_another_machine_the_manifest_found_from_here_is_used(
    saved_call: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest it was saved from is not there: the one found from the current folder is."""
    gone = str(project / "environments.yaml")
    data = saved_call.read_bytes().replace(
        json.dumps(gone).encode(), json.dumps("/nowhere/environments.yaml").encode(), 1
    )
    assert data != saved_call.read_bytes()
    saved_call.write_bytes(data)
    monkeypatch.chdir(project)
    assert main(["run", "--quiet", str(saved_call)]) == 0
    assert result(saved_call)["value"] == 6
    assert outcome(saved_call)["manifest"] == gone
