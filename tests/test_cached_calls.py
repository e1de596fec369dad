"""Cached calls and call records through the runner (#16): ``task(cache=True)``,
``.options(cache=...)``, ``cache_errors``, ``Runner(records=...)``.

A file the task appends to, in the worker, counts real runs. The store of a miss is written
off the caller's path, so a test waits for the entry before it expects a hit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tasks
from support import wait_for

import envrunner
from envrunner._cache import ResultCache, _read_entry
from envrunner._callrecords import RecordStore
from envrunner._runtime.codec import Decoder
from envrunner._runtime.errors import DecodeError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ResultCache:
    monkeypatch.setenv("ENVRUNNER_CACHE", str(tmp_path / "cache"))
    return ResultCache(tmp_path / "cache")


@pytest.fixture
def runner(manifest_path: Path, tmp_path: Path, cache: ResultCache) -> Iterator[envrunner.Runner]:
    with envrunner.Runner(manifest_path, progress=False, records=tmp_path / "runs.sqlite") as r:
        yield r


def runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def stored(cache: ResultCache, count: int) -> None:
    wait_for(lambda: len(cache.entries()) >= count, what=f"{count} stored results")


def records(tmp_path: Path) -> list[Any]:
    store = RecordStore(tmp_path / "runs.sqlite")
    try:
        return store.list()
    finally:
        store.close()


@pytest.mark.parametrize("value", [0, None, [], "", False], ids=repr)
def test_a_falsy_result_is_cached_like_any_other(
    runner: envrunner.Runner, cache: ResultCache, tmp_path: Path, value: Any
) -> None:
    counted = envrunner.task(env="same", cache=True)(tasks.counted)
    ran = tmp_path / "ran.txt"
    assert counted(str(ran), value) == value
    stored(cache, 1)
    assert counted(str(ran), value) == value
    assert counted.submit(str(ran), value).result(30) == value
    assert runs(ran) == 1


def test_submit_and_map_hit_too_and_other_arguments_miss(
    runner: envrunner.Runner, cache: ResultCache, tmp_path: Path
) -> None:
    counted = envrunner.task(env="same", cache=True)(tasks.counted)
    ran = str(tmp_path / "ran.txt")
    assert [f.result(30) for f in [counted.submit(ran, i) for i in range(3)]] == [0, 1, 2]
    stored(cache, 3)
    assert list(counted.map([ran] * 4, range(4))) == [0, 1, 2, 3]
    assert runs(tmp_path / "ran.txt") == 4  # only the value 3 was new
    assert counted(ran, value=2) == 2  # keywords bind to the same call
    assert runs(tmp_path / "ran.txt") == 4


def test_options_cache_false_runs_and_stores_nothing(
    runner: envrunner.Runner, cache: ResultCache, tmp_path: Path
) -> None:
    counted = envrunner.task(env="same", cache=True)(tasks.counted)
    ran = str(tmp_path / "ran.txt")
    counted(ran, "x")
    stored(cache, 1)
    uncached = counted.options(cache=False)
    assert uncached(ran, "x") == "x"
    assert uncached(ran, "y") == "y"
    assert runs(tmp_path / "ran.txt") == 3
    assert counted(ran, "x") == "x"  # the stored one
    assert runs(tmp_path / "ran.txt") == 3
    runner.shutdown()  # every store and record is written
    assert len(cache.entries()) == 1
    assert [r.cache for r in records(tmp_path)] == ["hit", "off", "off", "miss"]


def test_an_error_is_stored_only_with_cache_errors(
    runner: envrunner.Runner, cache: ResultCache, tmp_path: Path
) -> None:
    ran = str(tmp_path / "ran.txt")
    failing = envrunner.task(env="same", cache=True)(tasks.counted_failure)
    for _ in range(2):
        with pytest.raises(tasks.TaskError):
            failing(ran, 7)
    assert runs(tmp_path / "ran.txt") == 2  # not stored: each call ran

    keeping = failing.options(cache_errors=True)
    with pytest.raises(tasks.TaskError) as first:
        keeping.submit(ran, 7).result(30)
    stored(cache, 1)
    with pytest.raises(tasks.TaskError) as again:
        keeping(ran, 7)
    assert runs(tmp_path / "ran.txt") == 3  # raised again without running
    assert again.value.code == first.value.code == 7
    assert "counted_failure" in str(again.value.__cause__)  # the remote traceback, as stored
    runner.shutdown()
    assert [(r.cache, r.outcome) for r in records(tmp_path)][:2] == [
        ("hit", "error: TaskError"),
        ("miss", "error: TaskError"),
    ]


def test_a_large_array_result_is_stored_whole_and_its_caller_may_change_it(
    runner: envrunner.Runner, cache: ResultCache, tmp_path: Path
) -> None:
    """A result above the shared-memory threshold comes through shared memory; what is stored
    is a copy taken before the caller gets the array."""
    ran = str(tmp_path / "ran.txt")
    make = envrunner.task(env="same", cache=True)(tasks.counted_array)
    n = 1 << 18  # 2 MiB of float64, over the 256 KiB threshold
    first = make(ran, n)
    first[:] = -1.0  # the caller owns its result
    stored(cache, 1)
    second = make.submit(ran, n).result(30)
    assert runs(tmp_path / "ran.txt") == 1
    assert second[0] == 0.0 and second[-1] == n - 1 and second.flags.writeable
    entry = cache.entries()[0]
    assert entry.size > n * 8
    read = _read_entry(entry.path)  # it decodes with no shared memory at all
    assert read is not None
    header, body = read
    payload = bytes(body[: header["payload"]])
    buffers, offset = [], header["payload"]
    for size in header["buffers"]:
        buffers.append(body[offset : offset + size])
        offset += size
    assert Decoder(mapper=None).decode(payload, buffers)[-1] == n - 1


def test_keep_and_cache_do_not_go_together() -> None:
    with pytest.raises(ValueError, match="keep=True and cache=True"):
        envrunner.task(env="same", cache=True, keep=True)(tasks.add)  # type: ignore[call-overload]
    cached = envrunner.task(env="same", cache=True)(tasks.add)
    with pytest.raises(ValueError, match="keep=True and cache=True"):
        cached.options(keep=True)
    assert cached.options(keep=True, cache=False).keep


def test_an_argument_without_a_digest_fails_the_call_and_names_it(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    echo = envrunner.task(env="same", cache=True)(tasks.echo)
    with pytest.raises(TypeError, match=r"cache=False"):
        echo(threading.Lock())


def test_records_alone_record_every_call_of_the_runner(
    runner: envrunner.Runner, cache: ResultCache, tmp_path: Path
) -> None:
    assert runner.call("same", tasks.add, 1, 2) == 3
    with pytest.raises(ValueError):
        runner.submit("other", tasks.fail_builtin, "no").result(60)
    runner.shutdown()
    rows = records(tmp_path)
    assert [(r.task, r.env, r.cache, r.outcome) for r in rows] == [
        ("tasks.fail_builtin", "other", "off", "error: ValueError"),
        ("tasks.add", "same", "off", "ok"),
    ]
    assert rows[1].arguments.keys() == {"a", "b"}
    assert rows[1].packages["six"] == "1.16.0" and rows[0].packages["six"] == "1.15.0"
    assert cache.entries() == []


class Holder:
    """A pickled object whose arrays travel as out-of-band pickle buffers."""

    def __init__(self, array: Any) -> None:
        self.array = array


def test_an_answer_through_shared_memory_is_made_self_contained() -> None:
    """Arrays, pickle buffers and an out-of-band body in shared memory become frames."""
    import os

    import numpy as np

    from envrunner._cached import self_contained
    from envrunner._runtime.codec import Encoder
    from envrunner._runtime.shm import Arena, Mapper, available

    if not available():
        pytest.skip("no shared-memory folder")
    value: Any = {
        "array": np.arange(1000, dtype=np.float64),
        "in a tuple": (np.ones((20, 30)), "x"),
        "pickled": Holder(np.arange(500, dtype=np.int32)),
        "plain": list(range(2000)),  # with the rest, over max_body: the body goes out of band
    }
    arena = Arena(f"envrunner-{os.getpid()}-{os.getpid()}.selftest")
    released: list[tuple[str, int]] = []
    mapper = Mapper(lambda name, offset: released.append((name, offset)))
    try:
        encoder = Encoder(arena=arena, threshold=64, max_body=4096)
        payload, buffers = encoder.encode(value)
        assert encoder.segments  # something went through shared memory
        assert len(payload) < 64  # the body itself went out of band
        with pytest.raises(DecodeError, match="shared-memory"):
            Decoder(mapper=None).decode(payload, buffers)
        alone, frames = self_contained(payload, buffers, mapper)
        decoded = Decoder(mapper=None).decode(alone, frames)
        assert np.array_equal(decoded["pickled"].array, value["pickled"].array)
        assert np.array_equal(decoded["array"], value["array"])
        assert np.array_equal(decoded["in a tuple"][0], value["in a tuple"][0])
        assert decoded["in a tuple"][1] == "x" and decoded["plain"] == value["plain"]
        assert isinstance(decoded["in a tuple"], tuple)
        # an answer without shared memory comes back as it is
        plain_payload, plain_buffers = Encoder().encode(value)
        same, same_buffers = self_contained(plain_payload, plain_buffers, mapper)
        assert same is plain_payload and len(same_buffers) == len(plain_buffers)
    finally:
        mapper.close()
        arena.close()
