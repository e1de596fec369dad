"""A saved call (``task.save``), run inside its worker by ``envrunner run``.

::

    envrunner run FILE ─► Runner.submit(env, run_saved, code, body, frames, paths)
    worker: run_saved ─► the function rebuilt (``code.load_function``), the arguments decoded
            (``decoder.Decoder``) ─► fn(*args, **kwargs) ─► the value pickled here, in the
            worker, so that the caller writes it to ``FILE.result`` without loading it

The caller never needs the result's packages: the bytes that come back are a pickle made in the
environment that has them.

This module is part of the sealed worker runtime.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any, List, Sequence, Tuple

from .code import load_function
from .codec import Decoder
from .errors import EncodeError

__all__ = ["RESULT_PROTOCOL", "run_saved"]

#: Pickle protocol of result files: every supported Python (3.9+) reads it.
RESULT_PROTOCOL = 4


def run_saved(
    code: bytes, body: bytes, frames: Sequence[bytes], paths: Sequence[str], env: str = ""
) -> Tuple[str, bytes]:
    """Run a saved call here; return how its value was pickled and the pickle.

    Args:
        code: The function, as ``code.encode_function`` made it when the call was saved.
        body: The arguments ``[args, kwargs]`` as the ``Encoder`` made them.
        frames: Their out-of-band buffers.
        paths: Folders the saving process imported the function's module from; those that
            exist here are added to the import path (at its end) when the module is not found.
        env: The environment's name, for messages.

    Raises:
        Whatever the function raised; ``EncodeError`` when its value cannot be pickled.
    """
    _extend_path(paths)
    where = f"environment {env!r}" if env else "the worker"
    fn = load_function(code, env)
    args, kwargs = Decoder(where=where).decode(body, list(frames))
    value = fn(*args, **kwargs)
    return _pickled(value, getattr(fn, "__qualname__", "the function"))


def _extend_path(paths: Sequence[str]) -> None:
    known: List[str] = [os.path.realpath(p or os.getcwd()) for p in sys.path]
    for path in paths:
        if os.path.isdir(path) and os.path.realpath(path) not in known:
            sys.path.append(path)


def _pickled(value: Any, name: str) -> Tuple[str, bytes]:
    try:
        return "pickle", pickle.dumps(value, protocol=RESULT_PROTOCOL)
    except Exception as first:
        try:
            import cloudpickle

            return "cloudpickle", cloudpickle.dumps(value, protocol=RESULT_PROTOCOL)
        except Exception:
            raise EncodeError(
                f"the value {name} returned, a {type(value).__module__}.{type(value).__qualname__},"
                f" cannot be pickled into a result file: {type(first).__name__}: {first}. Return "
                "plain data (lists, dicts, numbers, arrays) instead"
            ) from first
