"""``envrunner cache`` and ``envrunner runs`` as a user types them, over real files and SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cache import key
from test_callrecords import record

from envrunner._cache import ResultCache
from envrunner._callrecords import RecordStore


def envrunner(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ENVRUNNER_")}
    environ["ENVRUNNER_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "envrunner", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_cache_list_show_and_clear(home: Path) -> None:
    cache = ResultCache(home / "results")
    old = cache.put(key([1]), b"a" * 100)
    cache.put(key([2]), b"b" * 100, error=True)
    os.utime(old, (time.time() - 3 * 86400,) * 2)

    listed = envrunner(home, "cache", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("KEY")
    assert "cachetask.evaluate (error)" in listed.stdout
    assert "2 results" in listed.stdout

    as_json = json.loads(envrunner(home, "cache", "list", "--json", "--older-than", "2d").stdout)
    assert [e["key"] for e in as_json["entries"]] == [old.name]
    assert envrunner(home, "cache", "list", "--task", "nothing").stdout.startswith(
        "no cached results"
    )

    shown = envrunner(home, "cache", "show", old.name[:10])
    assert shown.returncode == 0, shown.stderr
    assert "tf (key key-1, Python 3.11.9)" in shown.stdout
    assert "numpy  1.26.4" in shown.stdout
    assert "code cachetask.evaluate" in shown.stdout
    missing = envrunner(home, "cache", "show", "ffffffff")
    assert missing.returncode == 1
    assert "no cached result has a key starting with 'ffffffff'" in missing.stderr

    cleared = envrunner(home, "cache", "clear", "--older-than", "1d")
    assert cleared.stdout.startswith("removed 1 cached result from")
    assert envrunner(home, "cache", "clear", "--task", "evaluate").stdout.startswith("removed 1")
    assert cache.entries() == []


def test_a_bad_age_or_size_says_how_to_write_it(home: Path) -> None:
    bad_age = envrunner(home, "cache", "list", "--older-than", "3 days")
    assert bad_age.returncode == 2
    assert "'3 days' is not an age" in bad_age.stderr
    environ = {**os.environ, "ENVRUNNER_HOME": str(home), "ENVRUNNER_CACHE_SIZE": "lots"}
    bad_size = subprocess.run(
        [sys.executable, "-m", "envrunner", "cache", "list"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad_size.returncode == 2
    assert "ENVRUNNER_CACHE_SIZE='lots' is not a size" in bad_size.stderr


def test_runs_list_show_and_diff(home: Path) -> None:
    assert "records are opt-in" in envrunner(home, "runs").stdout
    store = RecordStore(home / "runs.sqlite")
    first = record(started=time.time() - 60)
    second = record(packages={"numpy": "2.1.0", "six": "1.16.0"}, cache="hit", git_dirty=True)
    store.add(first)
    store.add(second)
    store.close()

    listed = envrunner(home, "runs")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "TASK",
        "ENV",
        "OUTCOME",
        "CACHE",
        "STARTED",
        "SECONDS",
        "GIT",
    ]
    assert lines[1].startswith(second.id[:12]) and "aaaaaaaa+" in lines[1]
    assert len(json.loads(envrunner(home, "runs", "--json", "--task", "evaluate").stdout)) == 2

    shown = envrunner(home, "runs", "show", first.id[:8])
    assert shown.returncode == 0, shown.stderr
    assert f"id           {first.id}" in shown.stdout
    assert "numpy  1.26.4" in shown.stdout
    assert json.loads(envrunner(home, "runs", "show", first.id, "--json").stdout)["id"] == first.id

    diff = envrunner(home, "runs", "diff", first.id[:8], second.id[:8])
    assert diff.returncode == 0, diff.stderr
    assert "package: numpy 1.26.4 -> 2.1.0" in diff.stdout
    assert "git: aaaaaaaaaaaa -> aaaaaaaaaaaa (dirty)" in diff.stdout
    unknown = envrunner(home, "runs", "diff", first.id[:8], "0123")
    assert unknown.returncode == 1
    assert "no call record has id '0123'" in unknown.stderr


def test_runs_reads_the_database_the_manifest_names(home: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    manifest = project / "environments.yaml"
    manifest.write_text("version: 1\nrecords: calls.sqlite\nenvironments:\n  a:\n")
    store = RecordStore(project / "calls.sqlite")
    store.add(record(task="tasks.named"))
    store.close()

    for args in (["runs", "--json", "-m", str(manifest)], ["-m", str(manifest), "runs", "--json"]):
        listed = envrunner(home, *args)
        assert listed.returncode == 0, listed.stderr
        assert [r["task"] for r in json.loads(listed.stdout)] == ["tasks.named"]
    found = subprocess.run(  # discovered in the current folder, as a Runner there finds it
        [sys.executable, "-m", "envrunner", "runs", "--json"],
        cwd=project,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("ENVRUNNER_")},
            "ENVRUNNER_HOME": str(home),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    assert [r["task"] for r in json.loads(found.stdout)] == ["tasks.named"]
    broken = envrunner(home, "runs", "-m", str(tmp_path / "missing.yaml"))
    assert broken.returncode == 2 and "missing.yaml" in broken.stderr
