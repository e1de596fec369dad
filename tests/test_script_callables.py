"""Every callable of a script travels: ``functools.partial`` of a script function, bound methods
of script objects, script objects inside arguments (numpy object arrays too), on the caller's
Python as with ProcessPoolExecutor; to another Python they are refused at ``submit()`` with an
``EncodeError`` that says how to fix it.

The script runs as ``__main__`` in a child process, as a user's script does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import envrunner

SCRIPT = textwrap.dedent(
    """
    import functools
    import json
    import sys

    import numpy as np

    import envrunner


    def double(x):
        return 2 * x


    class Point:
        def __init__(self, x):
            self.x = x

        def scaled(self, k):
            return self.x * k


    def x_of(point):
        return point.x


    def xs_of(points):
        return [p.x for p in points]


    def values_of(mapping):
        return [p.x for p in mapping.values()]


    def apply(fn, x):
        return fn(x)


    manifest, env = sys.argv[1], sys.argv[2]
    cases = {
        "partial": lambda ex: ex.submit(functools.partial(double, 4)).result(),
        "bound method": lambda ex: ex.submit(Point(3).scaled, 5).result(),
        "instance argument": lambda ex: ex.submit(x_of, Point(7)).result(),
        "instances in a dict": lambda ex: ex.submit(values_of, {"a": Point(1)}).result(),
        "object array": lambda ex: ex.submit(
            xs_of, np.array([Point(1), Point(2)], dtype=object)
        ).result(),
        "function argument": lambda ex: ex.submit(apply, double, 5).result(),
        "partial in chunks": lambda ex: list(
            ex.map(functools.partial(double), range(5), chunksize=2)
        ),
    }
    out = {}
    with envrunner.Runner(manifest, progress=False) as runner, runner.executor(env) as ex:
        for name, case in cases.items():
            try:
                out[name] = ["ok", case(ex)]
            except envrunner.EncodeError as exc:
                out[name] = ["EncodeError", str(exc)]
            except Exception as exc:
                out[name] = [type(exc).__name__, str(exc)]
    print(json.dumps(out))
    """
)

EXPECTED = {
    "partial": 8,
    "bound method": 15,
    "instance argument": 7,
    "instances in a dict": [1],
    "object array": [1, 2],
    "function argument": 10,
    "partial in chunks": [0, 2, 4, 6, 8],
}


def run_script(tmp_path: Path, manifest_path: Path, env: str) -> dict[str, list[object]]:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(manifest_path), env],
        capture_output=True,
        check=False,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, list[object]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_every_callable_of_a_script_travels_on_the_same_python(
    tmp_path: Path, manifest_path: Path
) -> None:
    out = run_script(tmp_path, manifest_path, "same")
    assert out == {name: ["ok", value] for name, value in EXPECTED.items()}


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("partial", "__main__.double"),
        ("bound method", "__main__.Point"),
        ("instance argument", "__main__.Point"),
        ("instances in a dict", "__main__.Point"),
        ("object array", "__main__.Point"),
        ("function argument", "__main__.double"),
        ("partial in chunks", "__main__.double"),
    ],
)
def test_script_objects_are_refused_at_submit_for_another_python(
    tmp_path: Path, manifest_path: Path, case: str, names: str, other_run: dict[str, list[object]]
) -> None:
    kind, message = other_run[case]
    assert kind == "EncodeError", f"{case}: {kind}: {message}"
    assert names in str(message)
    assert "move" in str(message) and "module next to your script" in str(message)
    assert "envrunner.worker" not in str(message)


@pytest.fixture(scope="module")
def other_run(
    tmp_path_factory: pytest.TempPathFactory, manifest_path: Path
) -> dict[str, list[object]]:
    return run_script(tmp_path_factory.mktemp("script"), manifest_path, "other")


@pytest.mark.parametrize("by_value", [True, False], ids=["same-python", "other-python"])
def test_an_object_pickle_cannot_send_is_named(by_value: bool) -> None:
    import threading

    from envrunner._runtime.codec import Encoder

    with pytest.raises(envrunner.EncodeError, match=r"a _thread\.lock cannot be sent"):
        Encoder(by_value=by_value).encode([threading.Lock()])
