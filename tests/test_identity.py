"""A function's identity and the digests of values: what invalidates a cached result and what not.

Each identity is computed in a fresh interpreter over a small project written into tmp_path (a
task module and a helper module beside it), as a script run twice would see it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envrunner._digest import UnhashableValueError, digest_value
from envrunner._identity import describe_changes, function_identity, is_project_file

HELPERS = """\
EPS = 1e-9


def normalize(values):
    \"\"\"Scale values to sum to one.\"\"\"
    total = sum(values) + EPS
    return [v / total for v in values]
"""

TASKS = """\
import json
import helpers
from helpers import normalize

SCALE = 2


def make_scaler(factor):
    def scale(x):
        return x * factor
    return scale


scaler = make_scaler(3)


def evaluate(values, power=1):
    \"\"\"Evaluate the values.\"\"\"
    return [scaler(v) ** power * SCALE for v in normalize(values)] + [helpers.EPS]
"""

PROBE = """\
import json, sys
sys.path.insert(0, sys.argv[1])
import tasks
from envrunner._identity import function_identity
identity = function_identity(tasks.evaluate)
print(json.dumps({"digest": identity.digest, "parts": dict(identity.parts)}))
"""


def identity_of(project: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(project)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found: dict[str, object] = json.loads(result.stdout)
    return found


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "helpers.py").write_text(HELPERS)
    (tmp_path / "tasks.py").write_text(TASKS)
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def changes(before: dict[str, object], after: dict[str, object]) -> list[str]:
    old, new = before["parts"], after["parts"]
    assert isinstance(old, dict) and isinstance(new, dict)
    return describe_changes(old, new, "tasks.evaluate")


def test_identity_is_the_same_in_another_interpreter(project: Path) -> None:
    first, second = identity_of(project), identity_of(project)
    assert first == second
    parts = first["parts"]
    assert isinstance(parts, dict)
    assert {"code tasks.evaluate", "code helpers.normalize", "global helpers.EPS"} <= set(parts)
    assert "closure tasks.make_scaler.<locals>.scale:factor" in parts


def test_editing_a_helper_in_another_module_changes_the_identity_and_says_so(
    project: Path,
) -> None:
    before = identity_of(project)
    edit(project / "helpers.py", "return [v / total", "return [2 * v / total")
    after = identity_of(project)
    assert after["digest"] != before["digest"]
    assert changes(before, after) == ["helper normalize() changed"]


def test_a_global_a_helper_reads_counts(project: Path) -> None:
    before = identity_of(project)
    edit(project / "helpers.py", "EPS = 1e-9", "EPS = 1e-6")
    after = identity_of(project)
    assert changes(before, after) == ["global EPS changed"]


def test_docstrings_lines_and_comments_do_not_change_the_identity(project: Path) -> None:
    before = identity_of(project)
    edit(project / "helpers.py", "Scale values to sum to one.", "Make the values sum to 1.")
    edit(project / "tasks.py", '"""Evaluate the values."""', "# no docstring now")
    edit(project / "tasks.py", "SCALE = 2\n", "\n\n# moved down\nSCALE = 2\n")
    assert identity_of(project)["digest"] == before["digest"]


def test_a_closure_value_changes_the_identity(project: Path) -> None:
    before = identity_of(project)
    edit(project / "tasks.py", "make_scaler(3)", "make_scaler(4)")
    after = identity_of(project)
    assert changes(before, after) == ["closure value factor of make_scaler.scale() changed"]


def test_the_task_own_code_and_its_defaults_count(project: Path) -> None:
    before = identity_of(project)
    edit(project / "tasks.py", "power=1", "power=2")
    after = identity_of(project)
    assert changes(before, after) == ["its code changed"]


def test_a_new_helper_call_is_named(project: Path) -> None:
    before = identity_of(project)
    (project / "helpers.py").write_text(HELPERS + "\n\ndef clip(v):\n    return min(v, 1)\n")
    edit(project / "tasks.py", "for v in normalize(values)", "for v in map(helpers.clip, values)")
    said = changes(before, identity_of(project))
    assert said[0] == "its code changed"
    assert "now calls clip()" in said
    assert "no longer calls normalize()" in said


def test_installed_code_is_followed_by_name_only() -> None:
    assert not is_project_file(json.__file__)
    assert not is_project_file(np.__file__)
    assert is_project_file(__file__)
    assert is_project_file("<stdin>")


def test_functions_calling_each_other_are_followed_once() -> None:
    namespace: dict[str, object] = {"__name__": "cycle"}
    code = "def ping(n):\n    return pong(n - 1) if n else 0\n\ndef pong(n):\n    return ping(n)\n"
    exec(compile(code, "<cycle>", "exec"), namespace)
    identity = function_identity(namespace["ping"])
    assert {p for p in identity.parts if p.startswith("code ")} == {
        "code cycle.ping",
        "code cycle.pong",
    }


def identity_of_source(source: str, entry: str) -> dict[str, str]:
    namespace: dict[str, object] = {"__name__": "proj"}
    exec(compile(source, "<proj>", "exec"), namespace)
    return dict(function_identity(namespace[entry]).parts)


DECORATED = """\
import functools

def logged(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        return fn(*args)
    return wrapper

@logged
def helper(x):
    return x + 1

class Model:
    scale = 2

    def fit(self, x):
        return x * self.scale

def task(x):
    return Model().fit(helper(x))
"""


def test_decorated_helpers_and_classes_of_the_project_are_followed() -> None:
    before = identity_of_source(DECORATED, "task")
    assert "code proj.helper" in before and "code proj.Model" in before
    changed_helper = identity_of_source(DECORATED.replace("x + 1", "x + 2"), "task")
    assert describe_changes(before, changed_helper, "proj.task") == ["helper helper() changed"]
    changed_method = identity_of_source(DECORATED.replace("x * self", "x / self"), "task")
    assert describe_changes(before, changed_method, "proj.task") == ["helper Model.fit() changed"]
    changed_attribute = identity_of_source(DECORATED.replace("scale = 2", "scale = 3"), "task")
    assert describe_changes(before, changed_attribute, "proj.task") == ["helper Model() changed"]
    changed_decorator = identity_of_source(DECORATED.replace("fn(*args)", "fn(*args[:1])"), "task")
    assert describe_changes(before, changed_decorator, "proj.task") == [
        "helper logged.wrapper() changed"
    ]


def test_two_closures_of_one_inner_function_are_both_counted() -> None:
    source = (
        "def make(k):\n    def scale(x):\n        return x * k\n    return scale\n"
        "double, triple = make(2), make(3)\n"
        "def task(x):\n    return double(x) + triple(x)\n"
    )
    before = identity_of_source(source, "task")
    after = identity_of_source(source.replace("make(3)", "make(4)"), "task")
    assert describe_changes(before, after, "proj.task") == [
        "closure value k of make.scale#2() changed"
    ]


def test_a_lock_in_the_globals_is_counted_by_type() -> None:
    import threading

    namespace: dict[str, object] = {"__name__": "locked", "LOCK": threading.Lock()}
    exec("def f():\n    with LOCK:\n        return 1\n", namespace)
    identity = function_identity(namespace["f"])
    assert identity.parts["global locked.LOCK"] == "opaque _thread.lock"


# --------------------------------------------------------------------------- value digests


def test_plain_data_digests_keep_types_apart() -> None:
    values = [1, 1.0, True, "1", b"1", (1,), [1], {1}, {1: 1}, None, -0.0, 0.0, 1j]
    digests = [digest_value(v) for v in values]
    assert len(set(digests)) == len(values)


def test_dicts_keep_their_order_and_sets_do_not() -> None:
    assert digest_value({"a": 1, "b": 2}) != digest_value({"b": 2, "a": 1})
    assert digest_value({"x", "y", "z"}) == digest_value({"z", "y", "x"})


def test_set_digests_do_not_depend_on_the_hash_seed() -> None:
    probe = "from envrunner._digest import digest_value; print(digest_value({'a', 'b', 'c', 'd'}))"
    seen = {
        subprocess.run(
            [sys.executable, "-c", probe],
            env={"PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2, 3)
    }
    assert len(seen) == 1


def test_arrays_by_dtype_shape_and_content() -> None:
    a = np.arange(12, dtype=np.float64)
    assert digest_value(a) == digest_value(a.copy())
    assert digest_value(a) != digest_value(a.reshape(3, 4))
    assert digest_value(a) != digest_value(a.astype(np.float32))
    b = a.copy()
    b[5] = -1
    assert digest_value(a) != digest_value(b)
    strided = np.arange(24, dtype=np.float64)[::2]
    assert digest_value(strided) == digest_value(np.ascontiguousarray(strided))


def test_large_arrays_hash_in_pieces_the_same_each_time() -> None:
    big = np.random.default_rng(0).random(5_000_000)  # 40 MB: the threaded path
    assert digest_value(big) == digest_value(big.copy())
    changed = big.copy()
    changed[-1] += 1
    assert digest_value(big) != digest_value(changed)


def test_without_blake3_large_arrays_hash_with_blake2b_on_threads() -> None:
    probe = (
        "import sys; sys.modules['blake3'] = None\n"
        "import numpy as np\n"
        "from envrunner._digest import digest_value\n"
        "big = np.arange(5_000_000, dtype=np.float64)\n"
        "other = big.copy(); other[0] = -1\n"
        "print(digest_value(big), digest_value(big.copy()), digest_value(other))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    first, again, other = out.stdout.split()
    assert first == again != other
    assert first != digest_value(np.arange(5_000_000, dtype=np.float64))  # blake3 here


def test_other_objects_by_pickle_and_a_clear_error_when_they_do_not() -> None:
    import fractions
    import threading

    assert digest_value(fractions.Fraction(1, 3)) == digest_value(fractions.Fraction(2, 6))
    with pytest.raises(UnhashableValueError, match=r"argument 'lock'.*_thread.lock.*cache=False"):
        digest_value(threading.Lock(), "argument 'lock'")
