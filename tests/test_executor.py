"""Our conformance suite for the executor face: what code written for ProcessPoolExecutor relies
on, run against an environment on the caller's Python and one on another Python (``env``).

Covers map (all calls submitted at once, order, errors, timeout, chunks, a bounded window),
submit, wait, as_completed, callbacks, cancel, shutdown while calls are pending, submit after
shutdown, references freed, initializers, asyncio and ``run_in_executor``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import itertools
import os
import weakref
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import tasks
from support import wait_for

import envrunner

# A busy worker holds up to 8 calls (1 running, the rest sent ahead, no longer cancellable);
# submitting more than this behind a blocked pool leaves some truly queued.
BEYOND_THE_WINDOW = 20


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """A file whose creation releases the calls blocked in ``tasks.gate``; opened at the end."""
    path = tmp_path / "gate"
    yield path
    path.touch()


def block_workers(executor: cf.Executor, gate: Path, workers: int) -> list[cf.Future[int]]:
    """Occupy every worker of the executor's environment with a call waiting on ``gate``."""
    return [executor.submit(tasks.gate, str(gate)) for _ in range(workers)]


def workers_of(runner: envrunner.Runner, env: str) -> int:
    return runner.manifest[env].workers


# ------------------------------------------------------------------ map


def test_the_map_idiom_returns_every_result_after_the_with_block(
    manifest_path: Path, env: str
) -> None:
    with envrunner.Runner(manifest_path, progress=False) as runner:
        results = runner.map(env, tasks.square, range(100))
    assert list(results) == [x * x for x in range(100)]


def test_map_runs_every_call_though_none_is_read(
    runner: envrunner.Runner, env: str, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    with runner.executor(env) as executor:
        results = executor.map(tasks.note, [str(ran)] * 30)
        wait_for(
            lambda: ran.exists() and len(ran.read_text().split()) == 30,
            what="every call of the map to run",
        )
        assert len(list(results)) == 30


def test_map_raises_an_error_of_the_input_itself(runner: envrunner.Runner, env: str) -> None:
    def broken() -> Iterator[int]:
        yield 1
        raise LookupError("the input broke")

    with runner.executor(env) as executor, pytest.raises(LookupError, match="the input broke"):
        executor.map(tasks.square, broken())


def test_map_raises_a_call_error_at_its_place(runner: envrunner.Runner, env: str) -> None:
    with runner.executor(env) as executor:
        results = executor.map(tasks.square_or_fail, range(6), itertools.repeat(3))
        assert [next(results) for _ in range(3)] == [0, 1, 4]
        with pytest.raises(tasks.TaskError, match="refused 3"):
            next(results)


def test_map_timeout(runner: envrunner.Runner, env: str, gate: Path) -> None:
    with runner.executor(env) as executor:
        results = executor.map(tasks.gate, [str(gate)], timeout=0.5)
        with pytest.raises(cf.TimeoutError):
            next(results)


@pytest.mark.parametrize("chunksize", [2, 7, 200])
def test_map_in_chunks(runner: envrunner.Runner, env: str, chunksize: int) -> None:
    with runner.executor(env) as executor:
        assert list(executor.map(tasks.add, range(50), range(50), chunksize=chunksize)) == [
            2 * x for x in range(50)
        ]


def test_map_in_chunks_sends_one_call_per_chunk(
    runner: envrunner.Runner, env: str, gate: Path
) -> None:
    with runner.executor(env) as executor:
        blockers = block_workers(executor, gate, workers_of(runner, env))
        results = executor.map(tasks.square, range(10), chunksize=4)
        assert len(executor._pending) == len(blockers) + 3  # chunks of 4, 4 and 2
        gate.touch()
        assert list(results) == [x * x for x in range(10)]


def test_the_issue_idiom_with_a_task(manifest_path: Path, env: str) -> None:
    square = envrunner.task(env=env)(tasks.square)
    with envrunner.Runner(manifest_path, progress=False):
        results = square.map(range(100))
    assert list(results) == [x * x for x in range(100)]


def test_map_in_chunks_fails_a_chunk_with_its_error(runner: envrunner.Runner, env: str) -> None:
    with runner.executor(env) as executor:
        results = executor.map(tasks.square_or_fail, range(8), itertools.repeat(5), chunksize=4)
        assert [next(results) for _ in range(4)] == [0, 1, 4, 9]
        with pytest.raises(tasks.TaskError, match="refused 5"):
            next(results)


def test_map_refuses_a_meaningless_size(runner: envrunner.Runner, env: str) -> None:
    with runner.executor(env) as executor:
        with pytest.raises(ValueError, match="chunksize"):
            executor.map(tasks.square, range(3), chunksize=0)
        with pytest.raises(ValueError, match="buffersize"):
            executor.map(tasks.square, range(3), buffersize=0)


def test_map_with_a_buffer_reads_an_endless_input(runner: envrunner.Runner, env: str) -> None:
    with runner.executor(env) as executor:
        results = cast(
            "Generator[int, None, None]",
            executor.map(tasks.square, itertools.count(), buffersize=3),
        )
        assert [next(results) for _ in range(10)] == [x * x for x in range(10)]
        assert len(executor._pending) <= 4
        results.close()


def test_task_map_takes_the_same_options(runner: envrunner.Runner, env: str) -> None:
    square = envrunner.task(env=env)(tasks.square)
    assert list(square.map(range(20), chunksize=3)) == [x * x for x in range(20)]
    endless = square.map(itertools.count(), buffersize=2)
    assert [next(endless) for _ in range(5)] == [0, 1, 4, 9, 16]


def test_map_keeps_no_result_it_yielded(runner: envrunner.Runner, env: str) -> None:
    with runner.executor(env) as executor:
        results = executor.map(tasks.make_array, [1000, 1000, 1000])
        first = next(results)
        gone = weakref.ref(first)
        del first
        gc.collect()
        assert gone() is None, "the iterator kept a result it had yielded"
        assert len(list(results)) == 2


# ------------------------------------------------------------------ submit, wait, callbacks


def test_submit_wait_and_as_completed(runner: envrunner.Runner, env: str) -> None:
    with runner.executor(env) as executor:
        futures = [executor.submit(tasks.add, x, b=1) for x in range(10)]
        done, not_done = cf.wait(futures, timeout=60)
        assert not not_done and len(done) == 10
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=60)) == list(
            range(1, 11)
        )
        failing = executor.submit(tasks.fail_custom, "boom", 7)
        waiting: list[cf.Future[Any]] = [failing, *futures]
        finished, _ = cf.wait(waiting, return_when=cf.FIRST_EXCEPTION, timeout=60)
        assert failing in finished
        error = failing.exception(60)
        assert isinstance(error, tasks.TaskError) and error.code == 7


def test_callbacks_run_when_done_and_after(runner: envrunner.Runner, env: str) -> None:
    seen: list[int] = []
    with runner.executor(env) as executor:
        future = executor.submit(tasks.square, 4)
        future.add_done_callback(lambda f: seen.append(f.result()))
        future.result(60)
        wait_for(lambda: seen == [16], what="the callback")
        future.add_done_callback(lambda f: seen.append(-f.result()))
        assert seen == [16, -16]


def test_submit_after_shutdown_raises_runtime_error(runner: envrunner.Runner, env: str) -> None:
    executor = runner.executor(env)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(tasks.square, 2)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.map(tasks.square, [1])


def test_the_executor_keeps_no_finished_future(runner: envrunner.Runner, env: str) -> None:
    with runner.executor(env) as executor:
        future = executor.submit(tasks.make_array, 100)
        future.result(60)
        gone = weakref.ref(future)
        del future
        gc.collect()
        assert gone() is None


# ------------------------------------------------------------------ cancel, shutdown


def test_cancel_withdraws_a_queued_call(
    runner: envrunner.Runner, env: str, gate: Path, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    with runner.executor(env) as executor:
        blockers = block_workers(executor, gate, workers_of(runner, env))
        wait_for(lambda: all(f.running() for f in blockers), what="the workers to be busy")
        queued = [executor.submit(tasks.note, str(ran)) for _ in range(BEYOND_THE_WINDOW)]
        last = queued[-1]
        assert last.cancel() and last.cancelled() and last.done()
        assert not blockers[0].cancel(), "a running call cannot be cancelled"
        with pytest.raises(cf.CancelledError):
            last.result()
        gate.touch()
        for future in queued[:-1]:
            future.result(60)
    assert len(ran.read_text().splitlines()) == BEYOND_THE_WINDOW - 1


def test_executor_shutdown_cancels_what_has_not_started(
    runner: envrunner.Runner, env: str, gate: Path
) -> None:
    executor = runner.executor(env)
    blockers = block_workers(executor, gate, workers_of(runner, env))
    wait_for(lambda: all(f.running() for f in blockers), what="the workers to be busy")
    queued = [executor.submit(tasks.square, x) for x in range(BEYOND_THE_WINDOW)]
    executor.shutdown(wait=False, cancel_futures=True)
    assert queued[-1].cancelled()
    gate.touch()
    executor.shutdown(wait=True)
    assert all(f.result() > 0 for f in blockers), "running calls finish"
    for future in queued:
        assert future.cancelled() or future.result() >= 0


def test_runner_shutdown_cancel_futures_lets_running_calls_finish(
    manifest_path: Path, env: str, gate: Path
) -> None:
    runner = envrunner.Runner(manifest_path, progress=False)
    blockers = [runner.submit(env, tasks.gate, str(gate)) for _ in range(workers_of(runner, env))]
    wait_for(lambda: all(f.running() for f in blockers), what="the workers to be busy")
    queued = [runner.submit(env, tasks.square, x) for x in range(BEYOND_THE_WINDOW)]
    runner.shutdown(wait=False, cancel_futures=True)
    wait_for(lambda: queued[-1].done(), what="the queued call to be cancelled")
    assert queued[-1].cancelled()
    gate.touch()
    runner.shutdown(wait=True)
    assert all(isinstance(f.result(), int) for f in blockers), "running calls finish"


def test_terminate_stops_running_calls_with_an_error_that_says_so(
    manifest_path: Path, env: str, gate: Path
) -> None:
    runner = envrunner.Runner(manifest_path, progress=False)
    running = runner.submit(env, tasks.gate, str(gate))
    wait_for(running.running, what="the call to start")
    runner.terminate()
    error = running.exception(60)
    assert isinstance(error, envrunner.EnvrunnerError)
    assert not isinstance(error, cf.CancelledError)
    assert "stopped" in str(error)
    assert not running.cancelled()


# ------------------------------------------------------------------ initializer


def test_initializer_runs_once_in_each_worker(
    runner: envrunner.Runner, env: str, tmp_path: Path
) -> None:
    notes = tmp_path / "initialized"
    key = f"label-{env}"
    with runner.executor(env, initializer=tasks.initialize, initargs=(str(notes), key)) as ex:
        seen = [ex.submit(tasks.initialized).result(60) for _ in range(6)]
    assert all(s.count(key) == 1 for s in seen), seen
    pids = notes.read_text().split()
    assert len(pids) == len(set(pids)) >= 1, "once per worker"


def test_initializer_errors_fail_the_call(runner: envrunner.Runner, env: str) -> None:
    with runner.executor(env, initializer=tasks.fail_custom, initargs=("no setup", 3)) as ex:
        with pytest.raises(tasks.TaskError, match="no setup"):
            ex.submit(tasks.square, 2).result(60)


# ------------------------------------------------------------------ asyncio


def test_acall_and_run_in_executor(runner: envrunner.Runner, env: str) -> None:
    square = envrunner.task(env=env)(tasks.square)

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        with runner.executor(env) as executor:
            via_loop = await loop.run_in_executor(executor, tasks.square, 5)
        return [await square.acall(3), await runner.acall(env, tasks.add, 1, 2), via_loop]

    assert asyncio.run(main()) == [9, 3, 25]


def test_cancelling_the_awaiting_task_cancels_a_queued_call(
    runner: envrunner.Runner, env: str, gate: Path, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"

    async def main() -> None:
        blockers = [
            runner.submit(env, tasks.gate, str(gate)) for _ in range(workers_of(runner, env))
        ]
        wait_for(lambda: all(f.running() for f in blockers), what="the workers to be busy")
        ahead = [runner.submit(env, tasks.square, 1) for _ in range(BEYOND_THE_WINDOW)]
        waiting = asyncio.ensure_future(runner.acall(env, tasks.note, str(ran)))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gate.touch()
        for future in ahead:
            future.result(60)

    asyncio.run(main())
    assert not ran.exists(), "the cancelled call ran"


def test_module_level_executor_uses_the_current_runner(runner: envrunner.Runner, env: str) -> None:
    assert envrunner.current_runner() is runner
    with envrunner.executor(env) as executor:
        assert executor.submit(os.getpid).result(60) in runner.worker_pids(env)


def test_a_call_future_is_a_whole_future_with_its_lighter_condition() -> None:
    """``CallFuture`` sets Future's state itself, with a condition that binds no methods per
    instance (fewer objects per pending call): every attribute Future sets on this Python is
    there, and a waiter in ``result``, ``wait`` and ``as_completed`` wakes when another thread
    completes it. No process."""
    import threading

    from envrunner._futures import CallFuture

    assert set(vars(cf.Future())) <= set(vars(CallFuture("env", "f()")))
    waits: list[Any] = [
        lambda f: f.result(60),
        lambda f: cf.wait([f], 60).done.pop().result(),
        lambda f: next(cf.as_completed([f], 60)).result(),
    ]
    for wait in waits:
        future: CallFuture[int] = CallFuture("env", "f()")

        def complete(future: CallFuture[int] = future) -> None:
            # once the waiter sleeps on the condition (result) or has put its waiter in
            condition: Any = future._condition
            wait_for(lambda: condition._waiters or future._waiters, what="a waiter")
            future.set_result(7)

        thread = threading.Thread(target=complete)
        thread.start()
        assert wait(future) == 7
        thread.join()
