"""Values across environments: exact round trips, numpy 1 <-> 2, shared memory, kept results."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import os
import pathlib
import subprocess
import sys
import textwrap
import uuid
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy
import pytest
import tasks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from support import wait_for_file

import envrunner
from envrunner._runtime.code import encode_function
from envrunner._runtime.codec import Decoder, Encoder
from envrunner._runtime.shm import SHM_DIR, Arena, Mapper


def same(a: Any, b: Any) -> bool:
    """Equal, of the same type, all the way down (arrays: same dtype, shape and contents)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, numpy.ndarray) and isinstance(b, numpy.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


# --------------------------------------------------------------------------- the codec itself

hashables = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.binary(max_size=5)
)
zones = st.sampled_from(
    [
        None,
        dt.timezone.utc,
        dt.timezone(dt.timedelta(hours=-3, minutes=-30), "X"),
        zoneinfo.ZoneInfo("Europe/Paris"),
    ]
)
scalars = st.one_of(
    hashables,
    st.floats(allow_nan=True),
    st.complex_numbers(allow_nan=False),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.datetimes(timezones=zones),
    st.dates(),
    st.times(timezones=zones),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.uuids(),
    st.builds(pathlib.PurePosixPath, st.text(min_size=1, max_size=5)),
    st.builds(pathlib.Path, st.text(min_size=1, max_size=5)),
)
arrays = hnp.arrays(
    dtype=st.one_of(
        hnp.boolean_dtypes(),
        hnp.integer_dtypes(),
        hnp.unsigned_integer_dtypes(),
        hnp.floating_dtypes(),
        hnp.complex_number_dtypes(),
        hnp.datetime64_dtypes(),
        hnp.timedelta64_dtypes(),
        hnp.byte_string_dtypes(),
        hnp.unicode_string_dtypes(),
    ),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
values = st.recursive(
    st.one_of(scalars, arrays),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=4), inner, max_size=4),
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    ),
    max_leaves=12,
)


@given(values)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_every_value_round_trips_exactly(value: Any) -> None:
    body, frames = Encoder(by_value=False).encode(value)
    assert same(Decoder().decode(body, frames), value)


@given(arrays)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_arrays_round_trip_through_shared_memory(array: numpy.ndarray) -> None:
    released: list[tuple[str, int]] = []
    arena = Arena(f"envrunner-{os.getpid()}-{os.getpid()}")
    try:
        encoder = Encoder(arena=arena, threshold=1)
        body, frames = encoder.encode([array, array.T])
        decoded = Decoder(mapper=Mapper(lambda s, o: released.append((s, o)))).decode(body, frames)
        assert same(decoded[0], array) and same(decoded[1], array.T)
        del decoded
        if array.nbytes:
            assert sorted(released) == sorted(map(tuple, encoder.blocks))
    finally:
        arena.close()


def test_structured_and_odd_arrays_keep_their_dtype() -> None:
    structured = numpy.zeros(
        3, dtype=[("id", "<i4"), ("pos", "<f8", (2,)), ("tag", "S3"), ("inner", [("a", "u1")])]
    )
    structured["id"] = [1, 2, 3]
    structured["tag"] = [b"a", b"bc", b"def"]
    odd = [
        structured,
        numpy.arange(6, dtype=">i4").reshape(2, 3),  # big-endian
        numpy.asfortranarray(numpy.arange(6.0).reshape(2, 3)),
        numpy.arange(24).reshape(2, 3, 4)[:, ::2, 1:3],  # not contiguous
        numpy.array(7.5),  # 0-d
        numpy.empty((0, 3)),
        numpy.float32(1.25),
        numpy.datetime64("2024-01-02T03:04:05", "s"),
    ]
    body, frames = Encoder(by_value=False).encode(odd)
    assert same(Decoder().decode(body, frames), odd)


def test_array_likes_travel_as_arrays_and_byte_buffers_as_bytes() -> None:
    class Interface:
        def __init__(self) -> None:
            self.data = numpy.arange(4, dtype=numpy.int16)
            self.__array_interface__ = self.data.__array_interface__

    value = [Interface(), numpy.arange(3.0).data, bytearray(b"abc")]
    body, frames = Encoder(by_value=False).encode(value)
    decoded = Decoder().decode(body, frames)
    assert same(decoded[0], numpy.arange(4, dtype=numpy.int16))
    assert same(decoded[1], numpy.arange(3.0).tobytes())
    assert same(decoded[2], b"abc")


def test_a_class_of_main_cannot_go_to_another_python_and_says_why() -> None:
    Point = type("Point", (), {"__module__": "__main__"})  # noqa: N806
    with pytest.raises(envrunner.EncodeError, match="defined in __main__"):
        Encoder(by_value=False).encode(Point())


# --------------------------------------------------------------------------- between environments

EXAMPLES: dict[str, Any] = {
    "plain": [None, True, 2**70, -1.5, "ünï", b"\x00", (1, (2,)), {3: "int key"}, {1, 2}],
    "time": [
        dt.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=zoneinfo.ZoneInfo("Asia/Tokyo")),
        dt.date(2000, 1, 1),
        dt.time(23, 59, tzinfo=dt.timezone(dt.timedelta(hours=5))),
        dt.timedelta(days=-1, microseconds=3),
    ],
    "other": [decimal.Decimal("1.10"), uuid.UUID(int=7), pathlib.PurePosixPath("a/b"), 1 + 2j],
    "arrays": [
        numpy.arange(10, dtype=numpy.uint8),
        numpy.linspace(0, 1, 6, dtype=numpy.float16).reshape(2, 3),
        numpy.array([1 + 1j], dtype=numpy.complex64),
        numpy.array(["ab", "c"], dtype="<U2"),
        numpy.array([b"x"], dtype="S1"),
        numpy.array([1, 2], dtype="datetime64[ms]"),
        numpy.arange(12, dtype=">f8").reshape(3, 4)[::2, ::3],
        numpy.zeros(2, dtype=[("a", "<i2"), ("b", "<f4", (3,))]),
        numpy.array(True),
        numpy.int64(-5),
    ],
}


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_values_cross_from_numpy_1_on_python_39_to_numpy_2_on_python_312_and_back(
    runner: envrunner.Runner, kind: str
) -> None:
    value = EXAMPLES[kind]
    from_old = runner.call("other", tasks.echo, value)[0][0]  # Python 3.9, numpy 1.x
    assert same(from_old, value)
    into_new = runner.call("modern", tasks.echo, from_old)[0][0]  # Python 3.12, numpy 2.x
    assert same(into_new, value)
    back = runner.call("other", tasks.echo, into_new)[0][0]
    assert same(back, value)
    assert runner.call("other", tasks.numpy_version).startswith("1.")
    assert runner.call("modern", tasks.numpy_version).startswith("2.")


def test_a_worker_without_numpy_says_what_to_install(runner: envrunner.Runner) -> None:
    with pytest.raises(envrunner.DecodeError) as caught:
        runner.call("bare", tasks.echo, numpy.arange(3))
    message = str(caught.value)
    assert "received a numpy array, but numpy is not installed in environment 'bare'" in message
    assert "add numpy to the environment's requirements" in message
    assert runner.call("bare", tasks.plain_list, 3) == [0, 1, 2]


# --------------------------------------------------------------------------- shared memory


def segments_of(pid: int) -> set[str]:
    return {name for name in os.listdir(SHM_DIR) if name.startswith(f"envrunner-{pid}-")}


def test_large_arrays_travel_through_shared_memory_writable_and_without_copies(
    runner: envrunner.Runner, env: str
) -> None:
    big = numpy.arange(1_000_000, dtype=numpy.float64)  # 8 MB: above the threshold
    seen = runner.call(env, tasks.describe_array, big)
    assert seen["shared"] and seen["writeable"] and seen["sum"] == float(big.sum())
    small = runner.call(env, tasks.describe_array, numpy.arange(10.0))
    assert not small["shared"] and small["writeable"]
    scaled = runner.call(env, tasks.scale_in_place, big, 2.0)
    numpy.testing.assert_array_equal(scaled, big * 2)
    assert scaled.flags.writeable
    scaled += 1  # the caller may write into what it received
    assert segments_of(os.getpid())  # the arenas are there, owned by live processes


def test_large_arrays_cross_numpy_versions_through_shared_memory(runner: envrunner.Runner) -> None:
    big = numpy.random.default_rng(0).normal(size=(500, 300)).astype(">f4")[:, ::3]
    out = runner.call("other", tasks.echo, big)[0][0]
    again = runner.call("modern", tasks.echo, out)[0][0]
    assert same(again, big)


def test_shutdown_leaves_no_shared_memory_behind(manifest_path: Path) -> None:
    with envrunner.Runner(manifest_path, progress=False) as scoped:
        big = numpy.ones(500_000)
        assert scoped.call("same", tasks.array_stats, big)["sum"] == 500_000.0
        assert scoped.call("other", tasks.array_stats, big)["sum"] == 500_000.0
        result = scoped.call("other", tasks.make_array, 200_000)
        pids = scoped.worker_pids()
        owned = {f"envrunner-{os.getpid()}-{pid}-" for pid in [os.getpid(), *pids]}
        assert any(name.startswith(tuple(owned)) for name in os.listdir(SHM_DIR))
    assert result.sum() == sum(range(200_000))  # what the caller received outlives the runner
    left = [n for n in os.listdir(SHM_DIR) if n.startswith(tuple(owned))]
    assert left == []


def test_a_killed_workers_segments_are_reclaimed(manifest_path: Path) -> None:
    with envrunner.Runner(manifest_path, progress=False) as scoped:
        kept = scoped.call("same", tasks.make_array, 400_000)  # the worker now owns a segment
        pid = scoped.call("same", tasks.identify)["pid"]
        prefix = f"envrunner-{os.getpid()}-{pid}-"
        assert any(n.startswith(prefix) for n in os.listdir(SHM_DIR))
        crash = scoped.submit("same", tasks.exit_hard, 9)
        with pytest.raises(envrunner.WorkerCrashed):
            crash.result(60)
        assert not any(n.startswith(prefix) for n in os.listdir(SHM_DIR))
        assert kept.sum() == sum(range(400_000))  # still readable: the mapping outlives the file


def test_a_killed_callers_segments_are_reclaimed_by_the_next_runner(
    manifest_path: Path, tmp_path: Path
) -> None:
    script = tmp_path / "caller.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys, numpy, envrunner
            sys.path.insert(0, {str(Path(tasks.__file__).parent)!r})
            import tasks
            with envrunner.Runner({str(manifest_path)!r}, progress=False) as runner:
                runner.call("same", tasks.array_stats, numpy.ones(400_000))
                print(os.getpid(), flush=True)
                os.kill(os.getpid(), 9)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == -9, result.stderr
    dead = int(result.stdout.split()[0])
    assert segments_of(dead), "the killed caller left its arena behind"
    with envrunner.Runner(manifest_path, progress=False) as scoped:
        scoped.call("same", tasks.add, 1, 1)
    assert segments_of(dead) == set()


# --------------------------------------------------------------------------- kept results


def test_a_kept_result_is_used_in_place_by_later_calls(
    runner: envrunner.Runner, env: str, tmp_path: Path
) -> None:
    make = envrunner.task(env=env, keep=True)(tasks.make_model)
    ref = make(str(tmp_path / "collected"))
    assert isinstance(ref, envrunner.Ref)
    assert ref.type_name == "tasks.Model" and "Model(calls=0)" in repr(ref)
    first = runner.call(env, tasks.use_model, ref, 2)
    second = runner.call(env, tasks.use_model, ref, 3)
    assert first[0] == second[0] and first[1] == second[1]  # the same object, the same worker
    assert second[2] == 5  # it kept its state: no copy travelled
    with pytest.raises(envrunner.EncodeError):
        ref.fetch()  # it holds a lock: it could never have been sent, only used in place
    assert not (tmp_path / "collected").exists()
    del ref  # the worker lets go of it, no garbage collection needed
    wait_for_file(tmp_path / "collected")


def test_fetch_brings_a_kept_value_over(runner: envrunner.Runner) -> None:
    keep = envrunner.task(env="other")(tasks.make_array)
    # The per-call form (documented in task()); Task.submit's ParamSpec type cannot admit it.
    ref = keep.submit(6, keep=True).result()  # type: ignore[call-arg]
    fetched = ref.fetch()
    numpy.testing.assert_array_equal(fetched, numpy.arange(6.0).reshape(3, 2))
    numpy.testing.assert_array_equal(ref.fetch(), fetched)  # still kept
    ref.release()
    with pytest.raises(envrunner.ReferenceLostError, match="it was released"):
        ref.fetch()


def test_calls_taking_a_reference_land_on_the_worker_that_keeps_it(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    make = envrunner.task(env="same", keep=True)(tasks.make_model)
    ref = make(str(tmp_path / "x"))
    futures = [runner.submit("same", tasks.use_model, ref, 1) for _ in range(12)]
    others = [runner.submit("same", tasks.identify) for _ in range(12)]
    pids = {f.result(60)[1] for f in futures}
    assert pids == {ref.worker_pid}
    assert len({f.result(60)["pid"] for f in others} | pids) >= 1


def test_a_reference_cannot_cross_to_another_environment(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    ref = envrunner.task(env="same", keep=True)(tasks.make_model)(str(tmp_path / "x"))
    with pytest.raises(
        envrunner.EncodeError, match="a reference works only in its own environment"
    ):
        runner.call("other", tasks.use_model, ref, 1)


def test_a_reference_whose_worker_died_is_lost(manifest_path: Path, tmp_path: Path) -> None:
    with envrunner.Runner(manifest_path, progress=False) as scoped:
        ref = envrunner.task(env="other", keep=True)(tasks.make_model)(str(tmp_path / "x"))
        crash = scoped.submit("other", tasks.exit_hard, 1)
        with pytest.raises(envrunner.WorkerCrashed):
            crash.result(60)
        with pytest.raises(envrunner.ReferenceLostError, match="its worker has exited"):
            scoped.call("other", tasks.use_model, ref, 1)


def test_a_worker_keeping_objects_outlives_its_idle_timeout(
    manifest_path: Path, tmp_path: Path
) -> None:
    import time

    with envrunner.Runner(manifest_path, idle_timeout=0.2, progress=False) as scoped:
        ref = envrunner.task(env="other", keep=True)(tasks.make_model)(str(tmp_path / "x"))
        idle_pid = scoped.call("same", tasks.identify)["pid"]
        deadline = time.monotonic() + 20
        while idle_pid in scoped.worker_pids():  # the idle one goes...
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert ref.worker_pid in scoped.worker_pids()  # ...the keeper stays
        assert scoped.call("other", tasks.use_model, ref, 1)[1] == ref.worker_pid


def test_a_builtin_subclass_the_caller_lacks_arrives_as_the_builtin(
    runner: envrunner.Runner, env: str
) -> None:
    value = runner.call(env, tasks.version_like)
    assert value == "2.13.0+cpu" and type(value) is str


def test_ndarray_subclasses_keep_their_type_and_extras() -> None:
    masked = numpy.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    body, frames = Encoder(by_value=False).encode(masked)
    back = Decoder().decode(body, frames)
    assert isinstance(back, numpy.ma.MaskedArray)
    assert back.mask.tolist() == [False, True, False] and back.data.tolist() == [1.0, 2.0, 3.0]


# ------------------------------------------------------------------------ what cannot travel (#19)

TWO_LAMBDAS = [lambda x: x + 1, lambda x: x * 2]  # two on one line: the case under test


def make_adder(step: int, scale: int) -> Callable[[int], int]:
    def add(x: int) -> int:
        return x * scale + step

    return add


def test_a_closure_names_its_variables_in_quotes() -> None:
    with pytest.raises(envrunner.EncodeError) as info:
        encode_function(make_adder(1, 2), same_python=False, target="environment 'legacy'")
    message = str(info.value)
    assert "closure over the local variables 'scale', 'step'" in message
    assert "pass 'scale', 'step' as arguments" in message


def test_two_lambdas_on_one_line_are_ambiguous_not_misplaced() -> None:
    with pytest.raises(envrunner.EncodeError) as info:
        encode_function(TWO_LAMBDAS[1], same_python=False, target="environment 'legacy'")
    message = str(info.value)
    assert "holds 2 lambdas" in message and __file__ in message
    assert "Put each lambda on a line of its own, or define the function with def" in message
    assert "top level" not in message


def test_a_script_function_passed_as_a_value_to_another_python_says_what_to_do() -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("def double(x):\n    return 2 * x\n", namespace)
    with pytest.raises(envrunner.EncodeError) as info:
        Encoder(by_value=False).encode([namespace["double"]])
    message = str(info.value)
    assert "the function __main__.double cannot travel as a value" in message
    assert "move double into a module next to your script" in message
    body, buffers = Encoder(by_value=True).encode([namespace["double"]])  # same Python: by value
    assert Decoder().decode(body, buffers)[0](4) == 8
