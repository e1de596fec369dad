"""The pytest plugin, exercised as users meet it: inner pytest sessions (pytester, in a child
process) whose tests are marked to run in real environments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from junit_shape import check_junit

REAL_HOME = os.environ.get("HOME", "")
HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"

# Two Pythons other than the caller's, and the caller's own: a test's body travels the same
# way to each.
MANIFEST = f"""\
version: 1
environments:
  old:
    python: "3.9"
    requirements: ["six==1.15.0"]
  new:
    python: "3.12"
    requirements: ["six==1.16.0"]
  here:
    python: "{HERE}"
    requirements: ["six==1.16.0"]
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project with two environments; its sessions run in child processes (and their workers
    with them), building into the outer session's ENVRUNNER_HOME."""
    monkeypatch.setenv("HOME", REAL_HOME)  # pytester moves HOME; the Pythons and caches are here
    pytester.makefile(".yaml", environments=MANIFEST)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=240)


def test_marked_tests_run_inside_each_named_environment(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_where=f"""
        import sys

        import pytest

        import envrunner

        VERSIONS = {{
            "old": ((3, 9), "1.15.0"),
            "new": ((3, 12), "1.16.0"),
            "here": ({tuple(sys.version_info[:2])}, "1.16.0"),
        }}


        @pytest.mark.envrunner("old", "new")
        def test_both():
            import six
            python, six_version = VERSIONS[envrunner.current_environment()]
            assert sys.version_info[:2] == python and six.__version__ == six_version


        @pytest.mark.envrunner("*")
        def test_every_environment():
            import six
            python, six_version = VERSIONS[envrunner.current_environment()]
            assert sys.version_info[:2] == python and six.__version__ == six_version


        @pytest.mark.envrunner("new")
        @pytest.mark.parametrize("n", [1, 2])
        def test_with_its_own_parameters(n):
            assert sys.version_info[:2] == (3, 12) and n in (1, 2)


        def test_here():
            assert envrunner.current_environment() is None
        """
    )
    result = run(inner, "-v")
    result.assert_outcomes(passed=8)
    for case in (
        "test_both[old]",
        "test_both[new]",
        "test_every_environment[old]",
        "test_every_environment[new]",
        "test_every_environment[here]",
        "test_with_its_own_parameters[new-1]",
        "test_with_its_own_parameters[new-2]",
        "test_here",
    ):
        assert f"test_where.py::{case} PASSED" in result.stdout.str()


def test_failures_show_message_source_and_location_as_for_a_local_test(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        test_failing="""
        import pytest


        @pytest.mark.envrunner("here")
        def test_message():
            import six
            assert six.__version__ == "1.15.0", "six is " + six.__version__


        @pytest.mark.envrunner("new")
        def test_bare_assert_in_a_helper():
            total = 1
            check(total)


        def check(total):
            assert total == 2


        @pytest.mark.envrunner("old")
        def test_raises():
            raise KeyError("missing")


        @pytest.mark.envrunner("new")
        @pytest.mark.xfail(raises=ZeroDivisionError, strict=True)
        def test_expected_to_fail():
            1 / 0


        @pytest.mark.envrunner("new")
        def test_crashes_its_worker():
            import os
            os.abort()


        @pytest.mark.envrunner("new")
        def test_after_a_crash():
            import six
            assert six.__version__ == "1.16.0"
        """
    )
    result = run(inner, "--junit-xml=report.xml")
    result.assert_outcomes(failed=4, xfailed=1, passed=1)
    output = result.stdout.str()
    assert (
        '    def test_message():\n        import six\n>       assert six.__version__ == "1.15.0", '
        '"six is " + six.__version__\nE       AssertionError: six is 1.16.0\n\n'
        "test_failing.py:7: AssertionError"
    ) in output
    assert ">       check(total)\n\ntest_failing.py:13: " in output  # the caller's frame
    assert ">       assert total == 2\nE       assert total == 2\n\ntest_failing.py:17: " in output
    assert "E       KeyError: 'missing'" in output
    assert "died while running test_crashes_its_worker[new]: signal SIGABRT" in output
    for line in (
        "FAILED test_failing.py::test_message[here] - AssertionError: six is 1.16.0",
        "FAILED test_failing.py::test_bare_assert_in_a_helper[new] - assert total == 2",
        "FAILED test_failing.py::test_raises[old] - KeyError: 'missing'",
    ):
        assert line in output
    outcomes = check_junit(inner.path / "report.xml")
    assert outcomes["pytest", "test_message[here]"] == "failure"
    assert outcomes["pytest", "test_expected_to_fail[new]"] == "skipped"


def test_fixtures_are_computed_here_and_sent_as_arguments(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_fixtures="""
        import os
        import threading

        import pytest


        @pytest.fixture
        def settings():
            return {"name": "smoke", "sizes": (1, 2, 3)}


        @pytest.fixture
        def folder(tmp_path):
            yield tmp_path
            # teardown, back in the caller: the worker wrote into the folder it was sent
            assert (tmp_path / "from-worker.txt").read_text() == "written by 3.9"


        @pytest.fixture
        def caller_pid():
            return os.getpid()


        @pytest.fixture
        def lock():
            return threading.Lock()


        @pytest.fixture
        def numbers():
            return (n for n in range(3))


        @pytest.mark.envrunner("old")
        def test_gets_values(settings, folder, caller_pid):
            import sys
            assert os.getpid() != caller_pid
            assert settings == {"name": "smoke", "sizes": (1, 2, 3)}
            (folder / "from-worker.txt").write_text("written by %d.%d" % sys.version_info[:2])


        @pytest.mark.envrunner("here")
        def test_a_lock(lock):
            pass


        @pytest.mark.envrunner("old")
        def test_a_generator(numbers):
            pass
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=1, failed=2)
    output = result.stdout.str()
    assert (
        "fixture 'lock' of test_a_lock[here] cannot be sent to environment 'here', where the "
        "test runs: a _thread.lock cannot be sent"
    ) in output
    assert "fixture 'numbers' of test_a_generator[old] cannot be sent to environment 'old'" in (
        output
    )
    assert "make the fixture return plain data" in output


def test_an_environment_that_fails_to_build_makes_its_tests_errors(
    inner: pytest.Pytester,
) -> None:
    inner.makefile(
        ".yaml",
        environments=MANIFEST
        + '  broken:\n    python: "3.12"\n'
        + '    requirements: ["envrunner-no-such-package-zz==1"]\n',
    )
    inner.makepyfile(
        test_broken="""
        import pytest


        @pytest.mark.envrunner("broken")
        def test_one():
            pass


        @pytest.mark.envrunner("broken", "old")
        def test_two():
            pass
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=1, errors=2)
    output = result.stdout.str()
    assert "ERROR at setup of test_one[broken]" in output
    assert "envrunner: environment 'broken': installing" in output
    assert "envrunner-no-such-package-zz" in output  # the installer's last lines
    assert output.count("ERROR test_broken.py::test_") == 2
    assert result.stderr.str().count("broken: creating the virtualenv") == 1  # built once


def test_the_manifest_comes_from_the_option_or_discovery(inner: pytest.Pytester) -> None:
    (inner.path / "environments.yaml").rename(inner.path / "ci.yaml")
    inner.makepyfile(
        test_option="""
        import pytest


        @pytest.mark.envrunner("old")
        def test_old():
            import six
            assert six.__version__ == "1.15.0"
        """
    )
    run(inner, "--envrunner-manifest", "ci.yaml").assert_outcomes(passed=1)
    missing = run(inner)
    missing.assert_outcomes(errors=1)  # a test error, not a crash of the session
    assert "no envrunner manifest found" in missing.stdout.str()
    assert "With pytest: --envrunner-manifest PATH" in missing.stdout.str()


def test_workers_are_shared_by_the_session_and_stopped_at_its_end(
    inner: pytest.Pytester,
) -> None:
    inner.makeconftest(
        """
        import os


        def pytest_unconfigure(config):
            pids = config.rootpath / "pids.txt"
            gone = []
            for pid in {int(text) for text in pids.read_text().split()}:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    gone.append(pid)
            (config.rootpath / "gone.txt").write_text(" ".join(map(str, gone)))
        """
    )
    inner.makepyfile(
        test_shared="""
        import os

        import pytest


        @pytest.fixture
        def pids(request):
            return request.config.rootpath / "pids.txt"


        @pytest.mark.envrunner("new")
        def test_first(pids):
            with open(pids, "a") as stream:
                stream.write("%d\\n" % os.getpid())


        @pytest.mark.envrunner("new")
        def test_second(pids):
            with open(pids, "a") as stream:
                stream.write("%d\\n" % os.getpid())
        """
    )
    run(inner).assert_outcomes(passed=2)
    pids = (inner.path / "pids.txt").read_text().split()
    assert len(pids) == 2 and pids[0] == pids[1]
    assert (inner.path / "gone.txt").read_text() == pids[0]


def test_tests_that_cannot_run_in_a_worker_are_refused_with_the_reason(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        test_refused="""
        import pytest


        class TestGrouped:
            @pytest.mark.envrunner("old")
            def test_method(self):
                pass


        @pytest.mark.envrunner("olt")
        def test_misspelt():
            pass
        """
    )
    result = run(inner)
    result.assert_outcomes(errors=2)
    output = result.stdout.str()
    assert "move test_method[old] out of its class" in output
    assert "no environment 'olt'" in output and "did you mean 'old'?" in output


def test_a_session_without_marked_tests_loads_nothing_heavy(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_plain="""
        import sys


        def test_nothing_heavy_was_imported():
            heavy = {"zmq", "yaml", "virtualenv", "msgpack", "cloudpickle", "filelock"}
            assert not heavy & set(sys.modules)
            assert "envrunner.pytest_plugin" in sys.modules  # installed, hence loaded
        """
    )
    run(inner).assert_outcomes(passed=1)


def test_importing_the_plugin_is_cheap() -> None:
    code = (
        "import sys, envrunner.pytest_plugin\n"
        "print(sorted({'zmq', 'yaml', 'virtualenv', 'msgpack', 'cloudpickle'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_plugin_is_registered_through_an_entry_point() -> None:
    from importlib import metadata

    (entry,) = [e for e in metadata.entry_points(group="pytest11") if e.name == "envrunner"]
    assert entry.value == "envrunner.pytest_plugin"
    assert Path(entry.load().__file__).name == "pytest_plugin.py"
