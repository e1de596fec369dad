"""The runtime, end to end: real environments, real worker processes, real sockets."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy
import pytest
import tasks
from support import pid_gone, wait_for

import envrunner
from envrunner._actions import PoolConfig

# --------------------------------------------------------------------------- calls


def test_call_runs_in_the_environment_interpreter(runner: envrunner.Runner, env: str) -> None:
    info = runner.call(env, tasks.identify)
    assert info["env"] == env
    expected_six = "1.16.0" if env == "same" else "1.15.0"
    assert info["six"] == expected_six
    assert info["pid"] != os.getpid()
    if env == "other":
        assert info["python"][:2] != list(sys.version_info[:2])
    else:
        assert info["python"][:2] == list(sys.version_info[:2])


def test_conflicting_versions_are_loaded_at_once_in_one_script(runner: envrunner.Runner) -> None:
    same = runner.submit("same", tasks.identify)
    other = runner.submit("other", tasks.identify)
    assert {same.result()["six"], other.result()["six"]} == {"1.16.0", "1.15.0"}
    numpys = runner.call("same", tasks.numpy_version), runner.call("other", tasks.numpy_version)
    assert numpys[0].startswith("2.") and numpys[1].startswith("1.")


def test_plain_values_round_trip_exactly(runner: envrunner.Runner, env: str) -> None:
    values = (None, True, 7, -(2**80), 1.5, "ß", b"\x00bytes", [1, [2]], (3, (4,)), {1: "int key"})
    sets = {1, 2}, frozenset({"a"})
    args, kwargs = runner.call(env, tasks.echo, *values, *sets, named={"k": (1, 2)})
    assert args == (*values, *sets)
    assert [type(a) for a in args] == [type(v) for v in (*values, *sets)]
    assert kwargs == {"named": {"k": (1, 2)}}


def test_numpy_arrays_cross_numpy_major_versions(runner: envrunner.Runner, env: str) -> None:
    array = numpy.arange(12, dtype=numpy.int32).reshape(3, 4)
    stats = runner.call(env, tasks.array_stats, array[:, ::2])  # not contiguous
    assert stats["shape"] == [3, 2] and stats["dtype"] == "int32"
    assert stats["sum"] == float(array[:, ::2].sum())
    assert stats["writeable"] is True
    back = runner.call(env, tasks.make_array, 6)
    assert isinstance(back, numpy.ndarray)
    numpy.testing.assert_array_equal(back, numpy.arange(6.0).reshape(3, 2))
    assert back.flags.writeable


def test_submit_returns_a_real_future(runner: envrunner.Runner, env: str) -> None:
    futures = [runner.submit(env, tasks.add, i, b=1) for i in range(10)]
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    done, _ = concurrent.futures.wait(futures, timeout=60)
    assert len(done) == 10
    ordered = sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=60))
    assert ordered == list(range(1, 11))


def test_futures_work_with_asyncio(runner: envrunner.Runner) -> None:
    async def main() -> list[int]:
        futures = [asyncio.wrap_future(runner.submit("same", tasks.add, i, 1)) for i in range(4)]
        return list(await asyncio.gather(*futures))

    assert asyncio.run(main()) == [1, 2, 3, 4]


def test_map_yields_results_in_order(runner: envrunner.Runner, env: str) -> None:
    results = list(runner.map(env, tasks.add, range(20), range(20)))
    assert results == [2 * i for i in range(20)]


def test_tasks_pinned_by_decorator_use_the_active_runner(runner: envrunner.Runner) -> None:
    assert tasks.decorated_same(4) == (8, "same")
    assert tasks.decorated_other.submit(5).result() == (15, "other")
    assert list(tasks.decorated_same.map([1, 2, 3])) == [(2, "same"), (4, "same"), (6, "same")]
    assert isinstance(tasks.decorated_same, envrunner.Task)
    # functools.update_wrapper sets it; Task's type does not declare it
    assert getattr(tasks.decorated_same, "__name__", None) == "decorated_same"


def test_a_worker_cannot_call_into_another_environment(runner: envrunner.Runner) -> None:
    with pytest.raises(RuntimeError, match="cannot call into another environment"):
        tasks.calls_other_env()


def test_calls_to_two_environments_run_at_the_same_time(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    first = runner.submit("same", tasks.rendezvous, str(tmp_path), "a", "b")
    second = runner.submit("other", tasks.rendezvous, str(tmp_path), "b", "a")
    assert (first.result(60), second.result(60)) == ("together", "together")


def test_an_environment_with_two_workers_runs_two_calls_at_once(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    first = runner.submit("same", tasks.rendezvous, str(tmp_path), "a", "b")
    second = runner.submit("same", tasks.rendezvous, str(tmp_path), "b", "a")
    assert (first.result(60), second.result(60)) == ("together", "together")
    pids = {Path(tmp_path, name).read_text() for name in "ab"}
    assert len(pids) == 2


def test_one_worker_environment_runs_calls_one_at_a_time(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    first = runner.submit("other", tasks.rendezvous, str(tmp_path), "a", "b", 1.0)
    second = runner.submit("other", tasks.rendezvous, str(tmp_path), "b", "a", 1.0)
    assert first.result(60) == "alone"  # b could not start before a gave up
    assert second.result(60) == "together"


def test_many_threads_may_call_at_once(runner: envrunner.Runner, env: str) -> None:
    def work(offset: int) -> list[int]:
        return [runner.call(env, tasks.add, offset, i) for i in range(15)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(0, 800, 100)))
    assert results == [[offset + i for i in range(15)] for offset in range(0, 800, 100)]


# --------------------------------------------------------------------------- errors


def test_builtin_exceptions_are_raised_as_themselves_with_the_remote_traceback(
    runner: envrunner.Runner, env: str
) -> None:
    with pytest.raises(ValueError, match="bad input") as caught:
        runner.call(env, tasks.fail_builtin, "bad input")
    cause = caught.value.__cause__
    assert isinstance(cause, envrunner.RemoteTraceback)
    assert f"Traceback from environment {env!r}" in str(cause)
    assert "tasks.py" in str(cause) and "in fail_builtin" in str(cause)
    assert "raise ValueError(message)" in str(cause)


def test_user_defined_exceptions_keep_their_type_and_attributes(
    runner: envrunner.Runner, env: str
) -> None:
    with pytest.raises(tasks.TaskError) as caught:
        runner.call(env, tasks.fail_custom, "custom", 42)
    assert caught.value.code == 42


def test_an_exception_the_caller_cannot_load_becomes_remote_error(
    runner: envrunner.Runner, env: str
) -> None:
    with pytest.raises(envrunner.RemoteError) as caught:
        runner.call(env, tasks.fail_unimportable)
    assert caught.value.type_name == "only_in_worker.Boom"
    assert caught.value.message == "kaboom"
    assert f"in environment {env!r}" in str(caught.value)
    assert "fail_unimportable" in str(caught.value.__cause__)


def test_an_argument_that_cannot_be_sent_is_named(runner: envrunner.Runner, env: str) -> None:
    with pytest.raises(envrunner.EncodeError, match=r"argument 2 \(b\) of tasks.add\(\)"):
        runner.call(env, tasks.add, 1, threading.Lock())


def test_a_result_that_cannot_be_sent_back_says_so(runner: envrunner.Runner, env: str) -> None:
    with pytest.raises(envrunner.EncodeError, match=r"the result of tasks\.unpicklable_result"):
        runner.call(env, tasks.unpicklable_result)
    assert runner.call(env, tasks.add, 1, 1) == 2  # the worker lives on


def test_an_unknown_environment_suggests_the_closest(runner: envrunner.Runner) -> None:
    with pytest.raises(envrunner.UnknownEnvironmentError, match="did you mean 'same'"):
        runner.call("sam", tasks.add, 1, 1)


def test_a_crash_fails_only_the_running_call(runner: envrunner.Runner) -> None:
    crash = runner.submit("other", tasks.exit_hard, 3)
    queued = runner.submit("other", tasks.add, 2, 3)
    with pytest.raises(envrunner.WorkerCrashed, match="exit code 3") as caught:
        crash.result(60)
    assert caught.value.env == "other" and caught.value.returncode == 3
    assert queued.result(60) == 5


def test_a_timeout_kills_the_worker_and_the_next_call_gets_a_new_one(
    runner: envrunner.Runner,
) -> None:
    before = runner.call("other", tasks.identify)["pid"]
    slow = envrunner.task(env="other", timeout=0.5)(tasks.sleep)
    with pytest.raises(envrunner.TaskTimeoutError) as caught:
        slow(30)
    assert isinstance(caught.value, TimeoutError)
    wait_for(lambda: pid_gone(before), what="the timed-out worker to die")
    assert runner.call("other", tasks.identify)["pid"] != before
    # options() keeps the timeout unless told otherwise; None drops it (the manifest sets none)
    assert slow.options(keep=False).timeout == 0.5
    patient = slow.options(timeout=None)
    assert patient.timeout is None
    assert patient(0.7) == 0.7  # longer than the timeout it no longer has


# --------------------------------------------------------------------------- output


def test_worker_output_reaches_the_caller_prefixed_and_before_the_result(
    runner: envrunner.Runner, env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert runner.call(env, tasks.shout, ["first line", "second line"]) == 2
    assert runner.call(env, tasks.shout, ["to stderr"], "err") == 1
    captured = capsys.readouterr()
    assert f"[{env}] first line\n[{env}] second line\n" in captured.out
    assert f"[{env}] to stderr\n" in captured.err


# --------------------------------------------------------------------------- the worker's world


def test_manifest_variables_reach_the_worker_and_the_callers_python_does_not(
    runner: envrunner.Runner,
) -> None:
    assert runner.call("same", tasks.environment_variable, "ENVRUNNER_TEST_FLAG") == (
        "from-manifest"
    )
    assert runner.call("same", tasks.environment_variable, "PYTHONPATH") is None
    assert runner.call("same", tasks.environment_variable, "VIRTUAL_ENV") is not None
    # pytest is installed where the tests run, never in the environments
    assert runner.call("same", tasks.can_import, "pytest") is False
    assert runner.call("same", tasks.can_import, "yaml") is False


def test_import_envrunner_in_a_worker_gives_the_sealed_face(
    runner: envrunner.Runner, env: str
) -> None:
    face = runner.call(env, tasks.envrunner_face)
    assert face["has_runner"] is False
    assert face["caller_modules"] == []
    assert "runtime" in face["file"]
    assert face["cwd"] == os.getcwd()


# --------------------------------------------------------------------------- functions of __main__

SCRIPT = """\
import sys
import envrunner

SCALE = 10
NAMES = ("a", "b")

def helper(x):
    return x * SCALE

@envrunner.task(env=sys.argv[1])
def compute(x, label="x"):
    import sys as worker_sys
    version = list(worker_sys.version_info[:2])
    return helper(x), label, NAMES, version, envrunner.current_environment()

def make_closure(offset):
    def inner(x):
        return x + offset
    return inner

if __name__ == "__main__":
    env = sys.argv[1]
    print("RESULT", compute(4, label="y"))
    print("LAMBDA", envrunner.call(env, lambda x: x ** 2, 7))
    try:
        print("CLOSURE", envrunner.call(env, make_closure(5), 1))
    except envrunner.EncodeError as exc:
        print("CLOSURE-ERROR", exc)
    try:
        compute(1, label=object)
    except Exception as exc:
        print("ERROR", type(exc).__name__)
"""


def run_script(tmp_path: Path, manifest_path: Path, env: str) -> str:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    environ = dict(os.environ, ENVRUNNER_MANIFEST=str(manifest_path))
    result = subprocess.run(
        [sys.executable, str(script), env],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_functions_of_main_run_in_the_same_python_by_value(
    tmp_path: Path, manifest_path: Path
) -> None:
    out = run_script(tmp_path, manifest_path, "same")
    minor = list(sys.version_info[:2])
    assert f"RESULT (40, 'y', ('a', 'b'), {minor}, 'same')" in out
    assert "LAMBDA 49" in out
    assert "CLOSURE 6" in out


def test_functions_of_main_run_in_another_python_by_source(
    tmp_path: Path, manifest_path: Path
) -> None:
    out = run_script(tmp_path, manifest_path, "other")
    assert "RESULT (40, 'y', ('a', 'b'), [3, 9], 'other')" in out
    assert "LAMBDA 49" in out
    assert "CLOSURE-ERROR" in out and "closure over the local variable 'offset'" in out


# --------------------------------------------------------------------------- lifecycle


def test_shutdown_leaves_no_process_and_no_socket_file(manifest_path: Path) -> None:
    with envrunner.Runner(manifest_path, progress=False) as scoped:
        pids = {
            scoped.call("same", tasks.identify)["pid"],
            scoped.call("other", tasks.identify)["pid"],
        }
        rundir = scoped.rundir
        assert rundir is not None and (rundir / "broker").exists()
        assert oct(rundir.stat().st_mode & 0o777) == "0o700"
        assert set(scoped.worker_pids()) == pids
    assert all(pid_gone(pid) for pid in pids)
    assert not rundir.exists()
    with pytest.raises(envrunner.RunnerClosedError):
        scoped.call("same", tasks.add, 1, 2)


def test_shutdown_waits_for_running_calls(manifest_path: Path) -> None:
    scoped = envrunner.Runner(manifest_path, progress=False)
    future = scoped.submit("same", tasks.sleep, 0.5)
    assert scoped.call("same", tasks.add, 1, 1) == 2  # the pool is up
    scoped.shutdown(wait=True)
    assert future.done() and future.result() == 0.5


def test_shutdown_kill_cancels_queued_calls_and_stops_running_ones(manifest_path: Path) -> None:
    scoped = envrunner.Runner(manifest_path, progress=False)
    running = scoped.submit("other", tasks.sleep, 60)
    # the worker's window fills with calls sent ahead (running, as far as the caller knows);
    # the last one waits in the queue
    sent = [scoped.submit("other", tasks.sleep, 60) for _ in range(PoolConfig.window_for(1))]
    queued = sent.pop()
    wait_for(lambda: running.running(), what="the first call to start")
    pids = scoped.worker_pids()
    scoped.shutdown(wait=True, cancel_futures=True, kill=True)
    assert queued.cancelled()
    for future in [running, *sent]:
        error = future.exception(5)
        assert isinstance(error, envrunner.EnvrunnerError) and "stopped" in str(error)
        assert not future.cancelled()
    assert all(pid_gone(pid) for pid in pids)


def test_idle_workers_exit_after_the_idle_timeout(manifest_path: Path) -> None:
    with envrunner.Runner(manifest_path, idle_timeout=0.3, progress=False) as scoped:
        pid = scoped.call("same", tasks.identify)["pid"]
        wait_for(lambda: pid_gone(pid) and not scoped.worker_pids(), what="the idle worker to exit")
        assert scoped.call("same", tasks.identify)["pid"] != pid


def occupy_the_other_worker(
    runner: envrunner.Runner, folder: Path
) -> concurrent.futures.Future[Any]:
    """Start a call on the "other" worker that runs until ``folder/go`` exists."""
    blocker = runner.submit("other", tasks.rendezvous, str(folder), "blocker", "go")
    wait_for(lambda: (folder / "blocker").exists(), what="the first call to start")
    return blocker


def let_the_broker_catch_up(runner: envrunner.Runner) -> None:
    """The broker takes submissions in order: once a later one is answered, it has sent the
    earlier ones on (to a busy worker, ahead of time)."""
    assert runner.submit("same", tasks.add, 0, 0).result(60) == 0


def test_a_queued_call_can_be_cancelled_but_not_one_sent_ahead(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    """A busy worker holds a few calls sent ahead (running, as far as the caller knows); the
    calls queued behind those can still be cancelled."""
    blocker = occupy_the_other_worker(runner, tmp_path)
    window = PoolConfig.window_for(1)  # "other" has one worker
    ahead = [runner.submit("other", tasks.add, n, 1) for n in range(window - 1)]
    queued = runner.submit("other", tasks.note, str(tmp_path / "queued"))
    let_the_broker_catch_up(runner)
    assert all(future.running() for future in ahead)
    assert not ahead[0].cancel()
    assert not queued.running() and queued.cancel()
    (tmp_path / "go").touch()
    assert blocker.result(60) == "together"
    assert [future.result(60) for future in ahead] == [n + 1 for n in range(window - 1)]
    assert queued.cancelled()
    assert runner.call("other", tasks.add, 2, 2) == 4
    assert not (tmp_path / "queued").exists(), "the cancelled call ran"


def test_a_crash_fails_the_call_that_ran_and_runs_the_unstarted_ones_once_elsewhere(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    """The worker starts a call sent ahead as soon as it has answered the one before. If that
    call kills it at once, the answer before may die with it; the calls after it never
    started: each runs exactly once, on the next worker."""
    blocker = occupy_the_other_worker(runner, tmp_path)
    victim = int((tmp_path / "blocker").read_text())
    crash = runner.submit("other", tasks.note_then_exit, str(tmp_path / "crash"), 3)
    after = [runner.submit("other", tasks.note, str(tmp_path / f"after{n}")) for n in range(3)]
    let_the_broker_catch_up(runner)
    (tmp_path / "go").touch()
    try:
        assert blocker.result(60) == "together"
    except envrunner.WorkerCrashed as exc:  # its answer was lost: it says so
        assert "died before its answer left the process" in str(exc)
    with pytest.raises(envrunner.WorkerCrashed, match="exit code 3"):
        crash.result(60)
    for n, future in enumerate(after):
        pid = future.result(60)
        assert pid != victim
        assert (tmp_path / f"after{n}").read_text() == f"{pid}\n"  # it ran exactly once
    assert (tmp_path / "crash").read_text() == f"{victim}\n"  # not run again (no retries)


def test_a_call_on_a_kept_object_is_not_overtaken_by_calls_sent_ahead(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    kept = envrunner.task(env="other", keep=True)(tasks.make_model)(str(tmp_path / "collected"))
    order = str(tmp_path / "order")
    blocker = occupy_the_other_worker(runner, tmp_path)
    before = [runner.submit("other", tasks.record, order, f"a{n}") for n in range(2)]
    pinned = runner.submit("other", tasks.record, order, "pinned", kept)
    after = [runner.submit("other", tasks.record, order, f"b{n}") for n in range(3)]
    let_the_broker_catch_up(runner)
    (tmp_path / "go").touch()
    assert blocker.result(60) == "together"
    assert pinned.result(60) == "pinned"
    assert [f.result(60) for f in before + after] == ["a0", "a1", "b0", "b1", "b2"]
    # the call waiting for the kept object's worker ran as soon as it was free
    assert Path(order).read_text().split() == ["a0", "a1", "pinned", "b0", "b1", "b2"]


def test_calls_sent_ahead_to_a_worker_that_is_killed_run_on_its_successor(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    blocker = occupy_the_other_worker(runner, tmp_path)
    ahead = runner.submit("other", tasks.identify)
    let_the_broker_catch_up(runner)
    victim = int((tmp_path / "blocker").read_text())
    os.kill(victim, 9)
    with pytest.raises(envrunner.WorkerCrashed):
        blocker.result(60)
    assert ahead.result(60)["pid"] != victim  # it never started, so it ran again elsewhere


def test_repr_shows_state(runner: envrunner.Runner) -> None:
    runner.call("same", tasks.add, 1, 1)
    text = repr(runner)
    assert text.startswith("<Runner manifest=") and "running" in text
    future = runner.submit("same", tasks.add, 1, 1)
    future.result()
    assert "tasks.add()" in repr(future) and "finished" in repr(future)


def test_a_result_the_caller_cannot_load_names_the_module_and_the_fix(
    runner: envrunner.Runner, env: str
) -> None:
    with pytest.raises(envrunner.DecodeError) as caught:
        runner.call(env, tasks.result_of_a_worker_only_class)
    message = str(caught.value)
    assert (
        f"cannot load the result of tasks.result_of_a_worker_only_class() from environment {env!r}"
        in message
    )
    assert (
        "only_in_worker.Thing needs module 'only_in_worker', which is not installed in the caller"
        in message
    )
    assert "Install only_in_worker where you call from" in message
    assert caught.value.module == "only_in_worker"


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_a_runner_leaves_no_file_descriptor_thread_or_child_behind(manifest_path: Path) -> None:
    with envrunner.Runner(manifest_path, progress=False) as warm:  # builds are done before
        warm.call("same", tasks.add, 1, 1)
        warm.call("other", tasks.add, 1, 1)
    fds, threads = open_fds(), set(threading.enumerate())
    with envrunner.Runner(manifest_path, progress=False) as scoped:
        assert scoped.call("same", tasks.add, 1, 2) == 3
        assert scoped.call("other", tasks.add, 1, 2) == 3
        pids = scoped.worker_pids()
    assert all(pid_gone(pid) for pid in pids)
    assert open_fds() <= fds
    wait_for(lambda: set(threading.enumerate()) <= threads, what="the runner's threads to end")


def module_function_using_a_sibling(x: int) -> int:
    return _sibling(x)


def _sibling(x: int) -> int:
    return x + 100


def test_a_module_function_can_travel_by_value_or_source_when_asked(
    runner: envrunner.Runner, env: str
) -> None:
    """This test module imports pytest, which workers lack: by reference it could not load."""
    future = runner._submit(env, module_function_using_a_sibling, (1,), {}, by_reference=False)
    assert future.result(60) == 101
    with pytest.raises(envrunner.DecodeError, match="No module named 'pytest'"):
        runner.call(env, module_function_using_a_sibling, 1)


def test_envrunner_functions_travel_too(runner: envrunner.Runner, env: str) -> None:
    assert runner.call(env, envrunner.current_environment) == env
    assert envrunner.current_environment() is None


def test_errors_are_named_as_users_import_them() -> None:
    assert envrunner.WorkerCrashed.__module__ == "envrunner"
    assert envrunner.RemoteTraceback.__module__ == "envrunner"
    import pickle

    error = envrunner.TaskTimeoutError("e", "f()", 1.5, 7)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is envrunner.TaskTimeoutError and str(again) == str(error)


def test_the_wire_s_plain_int_flags_are_zmq_s() -> None:
    """``wire`` spells zmq's flags as ints (pyzmq's enums cost Python code per ``|``)."""
    import zmq

    from envrunner._runtime import wire

    assert (wire.SNDMORE, wire.RCVMORE, wire.EVENTS, wire.POLLIN) == (
        zmq.SNDMORE,
        zmq.RCVMORE,
        zmq.EVENTS,
        zmq.POLLIN,
    )
