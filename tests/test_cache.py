"""The result cache on disk: hits, misses and why, torn and corrupt entries, LRU, many writers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from envrunner._cache import CallKey, EnvFacts, ResultCache, call_key

TASK_SOURCE = """\
def evaluate(values, power=1, *, label="x"):
    return [v ** power for v in values]
"""
ENV = EnvFacts("tf", "key-1", "3.11.9", {"numpy": "1.26.4", "six": "1.16.0"})


def task() -> Any:
    namespace: dict[str, Any] = {"__name__": "cachetask"}
    exec(compile(TASK_SOURCE, "<cachetask>", "exec"), namespace)
    return namespace["evaluate"]


def key(*args: Any, env: EnvFacts = ENV, **kwargs: Any) -> CallKey:
    return call_key(task(), args, kwargs, env)


@pytest.fixture
def cache(tmp_path: Path) -> ResultCache:
    return ResultCache(tmp_path / "cache", max_bytes=10**9)


def test_a_stored_result_comes_back_as_it_was_sent(cache: ResultCache) -> None:
    k = key([1, 2])
    assert cache.get(k) is None
    array = np.arange(1000, dtype=np.int64)
    cache.put(k, b"head", [b"one", array.data])
    assert cache.root.stat().st_mode & 0o777 == 0o700
    hit = cache.get(k)
    assert hit is not None
    assert (hit.payload, bytes(hit.buffers[0]), hit.error) == (b"head", b"one", False)
    assert np.array_equal(np.frombuffer(hit.buffers[1], dtype=np.int64), array)


def test_falsy_results_are_cached(cache: ResultCache) -> None:
    k = key([])
    cache.put(k, b"")
    hit = cache.get(k)
    assert hit is not None
    assert (hit.payload, hit.buffers) == (b"", [])


def test_arguments_are_bound_to_the_signature(cache: ResultCache) -> None:
    assert key([1], 1).key == key([1]).key == key(values=[1], power=1, label="x").key
    assert key([1], 2).key != key([1]).key
    assert key((1,)).key != key([1]).key


def test_the_environment_is_part_of_the_key() -> None:
    upgraded = EnvFacts("tf", "key-1", "3.11.9", {"numpy": "2.1.0", "six": "1.16.0"})
    assert key([1]).key != key([1], env=upgraded).key
    rebuilt = EnvFacts("tf", "key-2", "3.11.9", dict(ENV.packages))
    assert key([1]).key != key([1], env=rebuilt).key


def test_a_miss_says_which_package_changed(cache: ResultCache) -> None:
    cache.put(key([1, 2]), b"x")
    upgraded = EnvFacts("tf", "key-2", "3.11.9", {"numpy": "2.1.0", "six": "1.16.0"})
    later = key([1, 2], env=upgraded)
    assert cache.get(later) is None
    reason = cache.miss_reason(later)
    assert reason is not None
    assert reason.startswith(
        "recomputing evaluate(): environment 'tf': numpy 1.26.4 -> 2.1.0 since "
    )
    assert cache.miss_reason(key([3])) is None  # never stored with these arguments


def test_a_miss_after_clearing_says_so(cache: ResultCache) -> None:
    cache.put(key([1]), b"x")
    assert cache.clear(task="evaluate") == 1
    reason = cache.miss_reason(key([1]))
    assert reason is not None and "was evicted or cleared" in reason


def test_errors_are_stored_only_as_asked_and_marked(cache: ResultCache) -> None:
    k = key([5])
    cache.put(k, b"encoded exception", error=True)
    hit = cache.get(k)
    assert hit is not None and hit.error


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_a_corrupt_entry_is_a_miss_and_is_removed(cache: ResultCache, damage: str) -> None:
    k = key([1])
    path = cache.put(k, b"payload" * 100, [b"buffer" * 100])
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) - 10]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    assert cache.get(k) is None
    assert not path.exists()


def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", max_bytes=10**9)
    keys = [key([i]) for i in range(4)]
    paths = [cache.put(k, b"x" * 10_000) for k in keys[:3]]
    hour_ago = time.time() - 3600
    for age, path in enumerate(paths):  # written in order, an hour ago
        os.utime(path, (hour_ago + age, hour_ago + age))
    assert cache.get(keys[0]) is not None  # used now: the newest use
    entry_size = paths[0].stat().st_size
    cache.max_bytes = 3 * entry_size + 100  # headers differ by a few bytes (their times)
    cache.put(keys[3], b"x" * 10_000)
    assert [cache.get(k) is not None for k in keys] == [True, False, True, True]


def test_list_and_clear_by_task_and_age(cache: ResultCache) -> None:
    old = cache.put(key([1]), b"a")
    cache.put(key([2]), b"b")
    os.utime(old, (time.time() - 10 * 86400,) * 2)
    assert len(cache.entries(task="evaluate")) == 2
    assert cache.entries(task="other") == []
    assert [e.path for e in cache.entries(older_than=86400)] == [old]
    assert cache.clear(older_than=86400) == 1
    assert len(cache.entries()) == 1


def test_env_facts_of_a_built_environment_name_its_packages(manifest_path: Path) -> None:
    from envrunner._cache import env_facts
    from envrunner._environments import build, resolve
    from envrunner._manifest import load_manifest

    resolved = resolve(load_manifest(manifest_path)["same"])
    build(resolved, manifest_path=manifest_path)
    facts = env_facts(resolved)
    assert (facts.name, facts.key) == ("same", resolved.key)
    assert facts.python == ".".join(map(str, sys.version_info[:3]))
    assert facts.packages["six"] == "1.16.0"
    assert facts.packages["numpy"].startswith("2.")
    assert "cloudpickle" in facts.packages  # the worker runtime is part of what runs


WRITER = """\
import os, sys, time
sys.path.insert(0, {tests!r})
from test_cache import key
from envrunner._cache import ResultCache
cache = ResultCache({root!r}, max_bytes=10**12)
me = int(sys.argv[1])
deadline = time.monotonic() + 60
while not os.path.exists({go!r}):
    if time.monotonic() > deadline:
        sys.exit("no go")
    time.sleep(0.001)
k = key([1, 2, 3])
for round in range(15):
    cache.put(k, bytes([me]) * 100_000, [bytes([me]) * 2_000_000])
    hit = cache.get(k)
    assert hit is not None, "a reader after a write found nothing"
    owner = hit.payload[0]
    assert hit.payload == bytes([owner]) * 100_000, "payload mixed"
    assert bytes(hit.buffers[0]) == bytes([owner]) * 2_000_000, "buffer mixed"
print("done")
"""


def test_writers_of_one_key_at_once_never_leave_a_torn_entry(tmp_path: Path) -> None:
    root, go = tmp_path / "cache", tmp_path / "go"
    script = WRITER.format(tests=str(Path(__file__).parent), root=str(root), go=str(go))
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(1, 6)
    ]
    go.touch()
    outcomes = [w.communicate(timeout=120) for w in writers]
    assert [w.returncode for w in writers] == [0] * 5, outcomes
    cache = ResultCache(root)
    hit = cache.get(key([1, 2, 3]))
    assert hit is not None and hit.payload[0] in range(1, 6)
    assert [e.key for e in cache.entries()] == [key([1, 2, 3]).key]
    assert list(root.glob("entries/*/.*")) == []  # no temporaries left behind
