"""Call records in SQLite: written by several processes at once, read back, compared."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from envrunner._callrecords import (
    CallRecord,
    RecordStore,
    UnknownRecordError,
    caller_project_dir,
    diff_records,
    new_call_id,
    project_state,
)


def record(**changes: object) -> CallRecord:
    fields: dict[str, object] = {
        "id": new_call_id(),
        "task": "tasks.evaluate",
        "started": time.time(),
        "ended": time.time() + 1,
        "outcome": "ok",
        "cache": "miss",
        "env": "tf",
        "env_key": "k1",
        "python": "3.12.3",
        "host": "here",
        "project": "/p",
        "git_commit": "a" * 40,
        "git_dirty": False,
        "arguments": {"values": "d1", "power": "d2"},
        "code": {"python": "3.11", "code tasks.evaluate": "c1", "code helpers.normalize": "n1"},
        "packages": {"numpy": "1.26.4", "six": "1.16.0"},
    }
    fields.update(changes)
    return CallRecord(**fields)  # type: ignore[arg-type]


def test_a_record_reads_back_whole(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "runs.sqlite")
    assert (tmp_path / "runs.sqlite").stat().st_mode & 0o777 == 0o600
    written = record(git_dirty=None, git_commit=None, ended=None)
    store.add(written)
    assert store.get(written.id[:6]) == written
    assert store.list(task="evaluate") == [written]
    assert store.list(task="tasks.evaluate") == [written]
    assert store.list(task="valuate") == []
    store.close()


def test_unknown_and_ambiguous_ids_say_so(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "runs.sqlite")
    store.add(record(id="ab" + "0" * 30))
    store.add(record(id="ab" + "1" * 30))
    with pytest.raises(UnknownRecordError, match="several"):
        store.get("ab")
    with pytest.raises(UnknownRecordError, match="no call record has id 'ff'"):
        store.get("ff")
    with pytest.raises(UnknownRecordError, match="hex digits"):
        store.get("x%")
    store.close()


def test_the_diff_names_code_packages_and_arguments() -> None:
    a = record()
    b = record(
        code={"python": "3.11", "code tasks.evaluate": "c1", "code helpers.normalize": "n2"},
        packages={"numpy": "2.1.0", "six": "1.16.0"},
        arguments={"values": "d9", "power": "d2"},
        env_key="k2",
    )
    lines = diff_records(a, b)
    assert "code: helper normalize() changed" in lines
    assert "package: numpy 1.26.4 -> 2.1.0" in lines
    assert "environment 'tf': key k1 -> k2" in lines
    assert any(line.startswith("argument values: d1 -> d9") for line in lines)
    assert diff_records(a, a) == []


WRITER = """\
import os, sys, time
sys.path.insert(0, {tests!r})
from test_callrecords import record
from envrunner._callrecords import RecordStore
store = RecordStore({db!r})
deadline = time.monotonic() + 60
while not os.path.exists({go!r}):
    if time.monotonic() > deadline:
        sys.exit("no go")
    time.sleep(0.001)
for i in range(40):
    store.add(record(task="proc{{}}.task".format(sys.argv[1])))
store.close()
"""


def test_several_processes_write_at_once(tmp_path: Path) -> None:
    db, go = tmp_path / "runs.sqlite", tmp_path / "go"
    RecordStore(db).close()  # created before, as a runner would
    script = WRITER.format(tests=str(Path(__file__).parent), db=str(db), go=str(go))
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(i)], stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    go.touch()
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0] * 4, errors
    store = RecordStore(db)
    assert len(store.list(limit=None)) == 160
    assert {len(store.list(task=f"proc{i}.task", limit=None)) for i in range(4)} == {40}
    store.close()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_project_state_reads_the_commit_and_the_dirty_flag(tmp_path: Path) -> None:
    assert project_state(tmp_path) == (None, None)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "task.py").write_text("x = 1\n")
    git("add", "task.py")
    git("commit", "-qm", "first")
    head = git("rev-parse", "HEAD")
    assert project_state(tmp_path) == (head, False)
    (tmp_path / "task.py").write_text("x = 2\n")
    assert project_state(tmp_path) == (head, True)


def test_a_call_record_from_a_key_holds_digests_and_never_values(tmp_path: Path) -> None:
    import threading

    from envrunner._cache import EnvFacts
    from envrunner._results import CallResults

    def evaluate(values: list[int], secret: str = "") -> int:
        return len(values)

    env = EnvFacts("tf", "k1", "3.12.3", {"numpy": "2.1.0"})
    results = CallResults(records=tmp_path / "runs.sqlite", cache_dir=tmp_path / "cache")
    inputs = results.inputs(evaluate, ([1, 2],), {"secret": "hunter2"}, cache=False)
    pending = results.begin(evaluate, inputs, env, cache=False, started=1.0)
    results.finish(pending, payload=b"x", error=ValueError("hunter2 in the message"))
    assert results.records is not None
    (made,) = results.records.list()
    results.close()
    raw = (tmp_path / "runs.sqlite").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("runs.sqlite-*")
    )
    assert b"hunter2" not in raw
    assert made.outcome == "error: ValueError"
    assert set(made.arguments) == {"values", "secret"}
    assert made.cache_key is None and made.packages == {"numpy": "2.1.0"}
    assert made.started == 1.0 and made.git_commit == project_state(caller_project_dir())[0]
    assert results.inputs(evaluate, (threading.Lock(),), {}, cache=False) is None
    assert results.cache.entries() == []  # cache off: nothing stored
