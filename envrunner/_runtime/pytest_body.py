"""A pytest test's body as a worker runs it: the pytest plugin calls :func:`run_test` here.

The test function arrives as source code, whatever Python the worker runs. Sent by value it
would carry what pytest attached to it: its marks, which refer to ``_pytest``, and its module's
rewritten asserts, which call into pytest. The environment has neither. Its source, compiled
afresh here, refers to none of it.

This module is part of the sealed worker runtime: standard library only, parses on Python 3.9.
"""

from typing import Any

from .code import load_function

__all__ = ["run_test"]


def run_test(code: bytes, env: str, /, **fixtures: Any) -> None:
    """Rebuild the test function from ``code`` and call it with its fixtures' values.

    Args:
        code: The function as ``envrunner._runtime.code.encode_function`` sent it (as source).
        env: The environment's name, for messages.
        **fixtures: The values of the fixtures the test asks for, by name.
    """
    load_function(code, env)(**fixtures)  # a test's return value is not its outcome
