"""A finished call's answer spliced into another call's arguments without being decoded
(``envrunner._splice``): encoded by the runtime's encoder on both sides, decoded by its
decoder, as a worker would; no process."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import msgpack
import numpy as np
import pytest

from envrunner._runtime import formats
from envrunner._runtime.codec import Decoder, Encoder
from envrunner._splice import UnspliceableError, check, splice


def marked(value: Any) -> tuple[bytes, list[Any], list[Future[Any]]]:
    """``value`` encoded as the caller encodes a call's arguments: futures leave marks."""
    encoder = Encoder()
    encoder.futures = []
    body, frames = encoder.encode(value)
    return body, frames, list(encoder.futures)


def answer(value: Any, by_value: bool = False, **options: Any) -> tuple[bytes, list[Any]]:
    """``value`` encoded as a worker encodes its answer."""
    return Encoder(by_value, **options).encode(value)


def spliced(value: Any, answers: dict[int, Any], same: bool = False) -> Any:
    body, frames, futures = marked(value)
    encoded = [answers[id(f)] for f in futures]
    for body_of, buffers in encoded:
        check(body_of, buffers, same)
    body, frames = splice(body, frames, encoded, same)
    return Decoder().decode(body, frames)


def test_answers_take_the_places_of_their_marks_at_any_depth() -> None:
    a, b = Future[Any](), Future[Any]()
    value = [1, a, (a, "x", {2, 3}), {"k": b, "t": (b,)}, b"raw"]
    got = spliced(value, {id(a): answer([1.5, None, (7,)]), id(b): answer({"n": {1: "one"}})})
    inner_b = {"n": {1: "one"}}
    assert got == [
        1,
        [1.5, None, (7,)],
        ([1.5, None, (7,)], "x", {2, 3}),
        {"k": inner_b, "t": (inner_b,)},
        b"raw",
    ]


def test_buffers_of_answers_follow_the_calls_own() -> None:
    a, b = Future[Any](), Future[Any]()
    own = np.arange(3.0)
    got = spliced([own, a, b], {id(a): answer(np.ones((2, 2))), id(b): answer([np.zeros(4, "i2")])})
    assert np.array_equal(got[0], own)
    assert np.array_equal(got[1], np.ones((2, 2)))
    assert got[2][0].dtype == np.int16 and not got[2][0].any()


def test_a_pickled_answer_is_not_loaded_on_the_way() -> None:
    import fractions

    a = Future[Any]()
    got = spliced({"v": a}, {id(a): answer(fractions.Fraction(1, 3))})
    assert got == {"v": fractions.Fraction(1, 3)}


def test_an_out_of_band_body_is_moved_too() -> None:
    a = Future[Any]()
    big = answer(list(range(50)), max_body=64)  # travels as a buffer (extension 50)
    assert spliced(["head", a], {id(a): big}) == ["head", list(range(50))]


@pytest.mark.parametrize("same", [False, True], ids=["other-python", "same-python"])
def test_by_value_code_goes_only_to_the_callers_python(same: bool) -> None:
    body, buffers = answer(lambda: 1, by_value=True)
    if same:
        check(body, buffers, same)
    else:
        with pytest.raises(UnspliceableError):
            check(body, buffers, same)


def test_a_block_of_shared_memory_in_an_answer_is_not_spliced() -> None:
    """An answer's array that came through shared memory points to [segment, offset, size]: a
    block lent to the caller alone, so the caller decodes that answer instead."""
    header = msgpack.packb(["<f8", [2], "C", ["envrunner-1-w1-0", 0, 16]], use_bin_type=True)
    body = msgpack.packb(msgpack.ExtType(formats.NDARRAY, header), use_bin_type=True)
    with pytest.raises(UnspliceableError):
        check(body, [], True)


def test_a_kept_objects_handle_is_not_spliced() -> None:
    from envrunner._runtime.codec import encode_kept

    with pytest.raises(UnspliceableError):
        check(encode_kept(7, "tasks.Model", "Model()"), [], True)


def test_an_answers_block_is_refused_in_a_call_with_no_frames_of_its_own() -> None:
    """The broker thread splices without checking each answer first: the walk itself refuses
    an answer's block of shared memory, also where the call has no frames (so the answer's
    references are not moved, and would pass for the call's own blocks)."""
    header = msgpack.packb(["<f8", [2], "C", ["envrunner-1-w1-0", 0, 16]], use_bin_type=True)
    body = msgpack.packb(msgpack.ExtType(formats.NDARRAY, header), use_bin_type=True)
    a = Future[Any]()
    call, frames, futures = marked([a])
    assert frames == [] and futures == [a]
    with pytest.raises(UnspliceableError):
        splice(call, frames, [(body, [])], True)


def test_a_mark_inside_an_answer_is_refused() -> None:
    call, _frames, _futures = marked([Future[Any]()])
    with pytest.raises(UnspliceableError):
        check(call, [], True)
