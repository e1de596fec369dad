"""Workflows (#17): a future passed as an argument makes a dependency, identical calls merge,
a failure stops only its descendants, a cancel stops the waiting descendants.

Real environments and workers (the session's ``same`` and ``other``); a file the task appends
to counts real runs; gates (a file the test creates) hold a call until the test lets it go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest
import tasks
from support import wait_for

import envrunner

TIMEOUT = 120


def runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_future_passed_on_is_a_dependency_and_submit_returns_at_once(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    first = runner.submit("same", tasks.gated_value, str(gate), 20)
    # given in every place the encoder looks: top level, a list, a tuple, a dict, a keyword
    second = runner.submit("other", tasks.total, [first, (first, 1), {"k": first}], extra=first)
    assert not second.done() and not first.done()  # submit did not wait for its input
    gate.touch()
    assert second.result(TIMEOUT) == 20 + 20 + 1 + 20 + 20
    assert first.result() == 20


def test_a_chain_across_environments(runner: envrunner.Runner) -> None:
    value = runner.submit("same", tasks.add, 1, 1)
    for step in range(6):
        value = runner.submit("other" if step % 2 else "same", tasks.add, value, 1)
    assert value.result(TIMEOUT) == 8


def test_a_value_the_caller_cannot_load_goes_on_to_where_it_can_be(
    runner: envrunner.Runner,
) -> None:
    """The answer travels as its worker sent it: the caller never loads it (it could not)."""
    made = runner.submit("other", tasks.result_of_a_worker_only_class)
    assert runner.submit("other", tasks.module_of, made).result(TIMEOUT) == "only_in_worker"
    with pytest.raises(envrunner.DecodeError, match="only_in_worker"):
        made.result()  # (here it cannot be loaded)


@pytest.mark.parametrize("env", ["same", "other"])
def test_shared_memory_on_either_side_of_an_edge(runner: envrunner.Runner, env: str) -> None:
    """An answer that came through shared memory, and a call given a future with an array of
    its own large enough for shared memory: neither can take its inputs' answers as they are
    (that is for plain calls), so both are encoded again with the values, and both get them."""
    import numpy

    rows = 300_000  # 4.8 MB of float64: over the shared-memory threshold
    made = runner.submit(env, tasks.make_array, rows * 2)
    stats = runner.submit(env, tasks.array_stats, made).result(TIMEOUT)
    assert stats["shape"] == [rows, 2] and stats["sum"] == float(sum(range(rows * 2)))

    own = numpy.ones(rows * 2)
    ten = runner.submit(env, tasks.add, 4, 6)
    summed: Any = runner.submit(env, tasks.add, own, ten).result(TIMEOUT)
    assert summed.shape == own.shape and float(summed.sum()) == 11.0 * own.size


@pytest.mark.parametrize(
    "step",
    [
        # the call's own array went to shared memory: it must be encoded again
        "tasks.add, numpy.ones(100_000), x)\n    assert float(y.sum()) == 52 * 100_000",
        # an answer too large to walk on the broker's thread (a body of about 90 kB: over
        # 64 KiB, under the shared-memory threshold)
        "tasks.total, runner.submit('same', tasks.plain_list, 30_000), x)\n"
        "    assert y == sum(range(30_000)) + 51",
    ],
    ids=["shared-memory", "large-answer"],
)
def test_a_plain_chain_needs_no_inputs_thread(
    tmp_path: Path, manifest_path: Path, step: str
) -> None:
    """Plain answers go into the calls that wait for them on the broker's thread, as their
    workers sent them: the thread that decodes and encodes values again is never started. A
    call that must be encoded again, or an answer too large for the broker's thread, starts it
    (and gets its value)."""
    call, check = step.split("\n", 1)
    script = tmp_path / "chain.py"
    script.write_text(
        "import sys, threading\n"
        "import numpy\n"
        "import envrunner, tasks\n"
        f"with envrunner.Runner({str(manifest_path)!r}, progress=False) as runner:\n"
        "    x = runner.submit('same', tasks.add, 0, 1)\n"
        "    for _ in range(50):\n"
        "        x = runner.submit('same', tasks.add, x, 1)\n"
        "    assert x.result(120) == 51\n"
        "    names = {t.name for t in threading.enumerate()}\n"
        "    print('inputs thread after the chain:', 'envrunner-inputs' in names)\n"
        "    x = runner.submit('same', tasks.add, 50, 1)  # (51, its answer not decoded here)\n"
        f"    y = runner.submit('same', {call}.result(120)\n"
        f"{check}\n"
        "    names = {t.name for t in threading.enumerate()}\n"
        "    print('inputs thread after the step:', 'envrunner-inputs' in names)\n"
    )
    here = Path(__file__).resolve().parent
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here), str(here.parent)]))
    done = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "inputs thread after the chain: False",
        "inputs thread after the step: True",
    ]


def test_a_sync_call_given_a_future_waits_for_it(runner: envrunner.Runner) -> None:
    assert runner.call("other", tasks.add, runner.submit("same", tasks.add, 2, 3), 1) == 6


def test_a_failure_stops_only_its_descendants(runner: envrunner.Runner, tmp_path: Path) -> None:
    ran = tmp_path / "ran.txt"
    bad = runner.submit("same", tasks.square_or_fail, 3, 3)
    child = runner.submit("other", tasks.counted, str(ran), bad)
    grandchild = runner.submit("same", tasks.add, child, 1)
    good = runner.submit("same", tasks.square_or_fail, 2, 3)
    independent = runner.submit("other", tasks.add, good, 1)
    assert independent.result(TIMEOUT) == 5
    with pytest.raises(envrunner.DependencyError) as caught:
        grandchild.result(TIMEOUT)
    error = caught.value
    assert "square_or_fail() in environment 'same'" in error.ancestor
    assert error.error == "TaskError: ('refused 3', 3)"
    assert "counted()" in error.via
    assert isinstance(error.__cause__, tasks.TaskError)  # the ancestor's own error
    assert isinstance(child.exception(TIMEOUT), envrunner.DependencyError)
    assert runs(ran) == 0  # the child never ran


def test_a_crashed_ancestor_is_named_with_its_crash(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    crashed = runner.submit("same", tasks.exit_hard, 3)
    child = runner.submit("other", tasks.add, crashed, 1)
    with pytest.raises(envrunner.DependencyError, match="WorkerCrashed") as caught:
        child.result(TIMEOUT)
    assert isinstance(caught.value.__cause__, envrunner.WorkerCrashed)
    assert runner.call("same", tasks.add, 1, 1) == 2  # the pool goes on


def test_cancelling_a_queued_call_cancels_its_waiting_descendants(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    gates = [tmp_path / f"gate{i}" for i in range(2)]
    blockers = [runner.submit("same", tasks.gate, str(g)) for g in gates]  # both workers busy
    queued = runner.submit("same", tasks.add, 1, 1)
    child = runner.submit("other", tasks.add, queued, 1)
    grandchild = runner.submit("other", tasks.add, child, 1)
    try:
        assert queued.cancel()
        with pytest.raises(CancelledError):
            grandchild.result(TIMEOUT)
        assert child.cancelled()
    finally:
        for g in gates:
            g.touch()
    assert all(b.result(TIMEOUT) for b in blockers)


def test_cancelling_a_waiting_call_leaves_its_input_running(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    first = runner.submit("same", tasks.gated_value, str(gate), 5)
    child = runner.submit("other", tasks.add, first, 1)
    assert child.cancel()
    gate.touch()
    assert first.result(TIMEOUT) == 5
    assert child.cancelled()


def test_a_kept_object_passed_on_stays_in_its_worker(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    make = envrunner.task(env="same", keep=True)(tasks.make_model)
    model = make.submit(str(tmp_path / "marker"))  # a future of a Ref
    used = runner.submit("same", tasks.use_model, model, 2)
    _, pid, calls = used.result(TIMEOUT)
    assert calls == 2 and pid == model.result().worker_pid  # ran where the object is
    elsewhere = runner.submit("other", tasks.use_model, model, 1)
    with pytest.raises(envrunner.EncodeError, match="fetch"):
        elsewhere.result(TIMEOUT)


def test_leaving_the_runner_waits_for_waiting_calls(manifest_path: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with envrunner.Runner(manifest_path, progress=False) as runner:
        first = runner.submit("same", tasks.gated_value, str(gate), 1)
        last = runner.submit("other", tasks.add, runner.submit("same", tasks.add, first, 1), 1)
        gate.touch()
    assert last.result(0) == 3


def test_a_thread_pools_future_is_an_input_too(runner: envrunner.Runner, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        local = pool.submit(sum, [1, 2, 3])
        failing = pool.submit(int, "not a number")
        assert runner.submit("other", tasks.add, local, 1).result(TIMEOUT) == 7
        child = runner.submit("other", tasks.add, failing, 1)
        with pytest.raises(envrunner.DependencyError, match="ValueError: invalid literal"):
            child.result(TIMEOUT)


# --------------------------------------------------------------------------- merged calls


def test_identical_cached_calls_pending_at_once_run_once(
    manifest_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVRUNNER_CACHE", str(tmp_path / "cache"))
    ran, gate = tmp_path / "ran.txt", tmp_path / "gate"
    counted = envrunner.task(env="same", cache=True)(tasks.counted)
    gated = envrunner.task(env="same", cache=True)(tasks.gated_value)
    with envrunner.Runner(manifest_path, progress=False):
        blocker = gated.submit(str(gate), 7)  # cached too: its key stands for its value
        futures = [counted.submit(str(ran), blocker) for _ in range(3)]
        gate.touch()
        assert [f.result(TIMEOUT) for f in futures] == [7, 7, 7]
    assert runs(ran) == 1


def test_merge_on_and_off(runner: envrunner.Runner, tmp_path: Path) -> None:
    ran, gate = tmp_path / "ran.txt", tmp_path / "gate"
    blocker = runner.submit("same", tasks.gated_value, str(gate), [1, 2])
    merged = envrunner.task(env="same", merge=True)(tasks.counted)
    separate = envrunner.task(env="same")(tasks.counted)  # the default without cache
    one = [merged.submit(str(ran), blocker) for _ in range(3)]
    three = [separate.submit(str(tmp_path / "each.txt"), blocker) for _ in range(3)]
    gate.touch()
    assert [f.result(TIMEOUT) for f in one + three] == [[1, 2]] * 6
    assert one[0].result() is one[1].result()  # one value, decoded once
    assert runs(ran) == 1
    assert runs(tmp_path / "each.txt") == 3


def test_calls_given_futures_and_different_arrays_never_merge(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    """Two merge-on calls given the same future and different arrays large enough for shared
    memory: the bytes there are not compared, so neither merges. (The first call's block went
    back to the arena at submit, the second's array took the same block, and the two encoded
    calls were byte for byte the same: the second got the first's result.)"""
    import numpy

    gate = tmp_path / "gate"
    blocker = runner.submit("same", tasks.gated_value, str(gate), 1)
    merged: Any = envrunner.task(env="same", merge=True)(tasks.add)
    rows = 100_000  # 800 kB: over the shared-memory threshold
    sums = [merged.submit(numpy.full(rows, float(k)), blocker) for k in range(3)]
    gate.touch()
    assert [float(f.result(TIMEOUT).sum()) for f in sums] == [(k + 1.0) * rows for k in range(3)]


def test_a_merged_leader_cancelled_still_runs_for_its_followers(
    runner: envrunner.Runner, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    blocker = runner.submit("same", tasks.gated_value, str(gate), 3)
    merged: Any = envrunner.task(env="other", merge=True)(tasks.add)
    leader, follower = merged.submit(blocker, 1), merged.submit(blocker, 1)
    assert leader.cancel()
    gate.touch()
    assert follower.result(TIMEOUT) == 4


def test_nothing_left_waiting_after_a_workflow(runner: envrunner.Runner) -> None:
    wait_for(lambda: runner._broker is not None, what="a broker")
    broker = runner._broker
    assert broker is not None
    wait_for(lambda: not broker.scheduler.waiting, what="no call waiting")
    assert not broker.scheduler.leaders or all(
        t.state.value != "done" for t in broker.scheduler.leaders.values()
    )
    assert os.getpid()


# --------------------------------------------------------------------------- the example


class Example:
    """examples/workflow.py copied (with its manifest) into a folder of its own, so that a test
    may edit it; run as a user runs it, its task runs counted in a log file."""

    def __init__(self, root: Path) -> None:
        repo = Path(__file__).resolve().parent.parent
        (root / "examples").mkdir()
        (root / "environments").mkdir()
        self.script = root / "examples" / "workflow.py"
        self.script.write_text((repo / "examples" / "workflow.py").read_text())
        manifest = repo / "environments" / "workflow.yaml"
        (root / "environments" / "workflow.yaml").write_text(manifest.read_text())
        self.log = root / "runs.log"
        self.env = dict(os.environ, WORKFLOW_LOG=str(self.log), ENVRUNNER_CACHE=str(root / "c"))
        self.root = root

    def start(self, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(self.script)],
            cwd=self.root,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, expect: int = 0, **env: str) -> tuple[str, list[str]]:
        """Its output, and the tasks that ran (in the order they began)."""
        before = self.ran()
        process = self.start(**env)
        out, err = process.communicate(timeout=600)
        assert process.returncode == expect, out + err
        return out, self.ran()[len(before) :]

    def ran(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def test_the_workflow_example_reruns_only_what_changed(tmp_path: Path) -> None:
    example = Example(tmp_path)
    out, ran = example.run()
    assert sorted(ran) == ["compare", "fit_line", "fit_mean", "prepare"]
    assert "line: y = 3.000 x + 2.002" in out and "1.15.0" in out and "1.16.0" in out
    out_again, ran = example.run()
    assert ran == []  # the second run does no work
    assert out_again == out
    # one step edited: it and what follows run again, nothing else
    text = example.script.read_text()
    example.script.write_text(text.replace("MEAN_SHRINK = 0.0", "MEAN_SHRINK = 0.5"))
    out, ran = example.run()
    assert sorted(ran) == ["compare", "fit_mean"]
    assert "mean: y = 0.000 x + 1.73" in out
    # the first step edited: everything after it runs again
    example.script.write_text(example.script.read_text().replace("400, seed=7", "400, seed=8"))
    _, ran = example.run()
    assert sorted(ran) == ["compare", "fit_line", "fit_mean", "prepare"]


def test_killing_one_branchs_worker_fails_only_that_branch(tmp_path: Path) -> None:
    example = Example(tmp_path)
    pause = tmp_path / "pause"
    pause.mkdir()
    process = example.start(WORKFLOW_PAUSE=str(pause))
    try:
        pid = int(wait_for(lambda: _read(pause / "fit_mean.pid"), 300, "fit_mean to start"))
        os.kill(pid, signal.SIGKILL)
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, out + err
    assert "line: y = 3.000 x + 2.002" in out  # the other branch ran to its end
    assert "mean: failed: WorkerCrashed" in out and "SIGKILL" in out
    assert "compare: failed: DependencyError" in out and "fit_mean()" in out
    assert sorted(example.ran()) == ["fit_line", "fit_mean", "prepare"]
    # run again: what finished is stored; only the failed branch and what follows run
    _, ran = example.run()
    assert sorted(ran) == ["compare", "fit_mean"]


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_an_answer_too_deep_to_splice_fails_only_the_call_it_feeds(
    manifest_path: Path, tmp_path: Path
) -> None:
    """Splicing on the broker's thread meets an answer it cannot put in as it is for a reason
    other than those it checks (here: nested deeper than msgpack packs, once inside the
    call's own lists): that call fails, as it did on the inputs thread; the broker goes on."""
    deep: Any = []
    for _ in range(1015):  # the first call (two lists around it) packs and unpacks
        deep = [deep]
    count = str(tmp_path / "count")
    with envrunner.Runner(manifest_path, progress=False) as own:
        made = own.submit("same", tasks.counted, count, deep)
        nested: Any = made
        for _ in range(10):  # the mark ten lists further in: too deep once spliced
            nested = [nested]
        fed = own.submit("same", tasks.counted, count, nested)
        with pytest.raises(ValueError, match="recursion limit"):
            fed.result(TIMEOUT)
        assert own.submit("same", tasks.add, 2, 3).result(TIMEOUT) == 5
        # with an array of its own, encoded again into shared memory first: its block goes back
        import numpy

        with_array = own.submit("same", tasks.counted, count, [nested, numpy.ones(100_000)])
        with pytest.raises(ValueError, match="return a flatter value"):
            with_array.result(TIMEOUT)
        assert own._arena is not None and own._arena.in_use() == 0
