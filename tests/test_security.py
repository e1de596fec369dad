"""Only our own processes get in: attacks on a running runner, as another local process makes them.

Every attack carries a pickle that would create a file if it were ever loaded. The file must
never appear, the attack must be counted, and the runner must keep serving real calls.
"""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import faults
import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envrunner
from envrunner._runtime.codec import Decoder
from envrunner._runtime.errors import DecodeError, ProtocolError
from envrunner._runtime.formats import CLOUDPICKLE
from envrunner._runtime.protocol import (
    PROTOCOL_VERSION,
    Call,
    Calls,
    Result,
    Signer,
    Verifier,
    call_fields,
    pack,
    scope,
    unpack,
)


class Trap:
    """Unpickling this creates ``path``: proof that an attacker's pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


def poisoned_error(path: Path) -> bytes:
    """A failed-call answer whose exception is the trap (the broker loads errors)."""
    trap = msgpack.ExtType(CLOUDPICKLE, msgpack.packb(["Exception", pickle.dumps(Trap(path)), []]))
    blob = msgpack.packb(trap)
    answer: bytes = msgpack.packb(["ValueError", "x", "traceback", blob], use_bin_type=True)
    return answer


def result_frames(path: Path, key: bytes, sequence_from: int = 1) -> list[bytes]:
    signer = Signer(key)
    for _ in range(sequence_from - 1):
        signer.next_sequence()
    message = Result(call_id=1, ok=False, payload=poisoned_error(path))
    return pack(message, signer, scope("from", b"w1"))


@pytest.fixture
def attacked(manifest_path: Path) -> Any:
    with envrunner.Runner(manifest_path, progress=False) as runner:
        assert runner.call("same", faults.add, 1, 1) == 2
        yield runner


def send(runner: envrunner.Runner, frames: list[bytes], identity: bytes = b"w1") -> None:
    assert runner.rundir is not None
    context = zmq.Context()
    peer = context.socket(zmq.DEALER)
    peer.setsockopt(zmq.IDENTITY, identity)
    peer.setsockopt(zmq.LINGER, 2000)
    peer.connect(f"ipc://{runner.rundir / 'broker'}")
    peer.send_multipart(frames)
    peer.close()
    context.term()


def wait_counted(runner: envrunner.Runner, before: int) -> None:
    import time

    deadline = time.monotonic() + 10
    while runner.rejected_messages <= before:
        assert time.monotonic() < deadline, "the attack was never counted"
        time.sleep(0.01)


def forged(path: Path, key: bytes) -> dict[str, list[bytes]]:
    """Every way an attacker could shape the poisoned answer (``key`` is not the session key)."""
    good = result_frames(path, key)
    return {
        "unsigned": [good[0][32:]],
        "wrongly signed": result_frames(path, os.urandom(32)),
        "signed for another scope": pack(
            Result(call_id=1, ok=False, payload=poisoned_error(path)),
            Signer(key),
            scope("to", b"w1"),
        ),
        "truncated": [good[0][:32]],
        "oversized header": [b"\x00" * (32 + 65 * 1024 * 1024)],
        "garbage": [os.urandom(232)],
    }


ATTACKS = list(forged(Path("unused"), b"k" * 32))


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_forged_message_from_a_stranger_is_dropped_unread_and_counted(
    attacked: envrunner.Runner, tmp_path: Path, attack: str
) -> None:
    trap = tmp_path / "pwned"
    before = attacked.rejected_messages
    send(attacked, forged(trap, os.urandom(32))[attack], identity=b"intruder")
    wait_counted(attacked, before)
    assert not trap.exists()
    assert [attacked.call("same", faults.add, i, 1) for i in range(3)] == [1, 2, 3]


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_forged_message_in_a_workers_name_never_gets_in(
    attacked: envrunner.Runner, tmp_path: Path, attack: str
) -> None:
    """The ROUTER keeps a live worker's identity for that worker: an impostor is not heard."""
    trap = tmp_path / "pwned"
    send(attacked, forged(trap, os.urandom(32))[attack], identity=b"w1")
    assert [attacked.call("same", faults.add, i, 1) for i in range(3)] == [1, 2, 3]
    assert not trap.exists()


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_verifier_drops_every_forgery_before_decoding(tmp_path: Path, attack: str) -> None:
    """Had a forgery reached the broker in a worker's name, it would have been dropped unread."""
    trap = tmp_path / "pwned"
    session = os.urandom(32)
    verifier = Verifier(session)
    frames = forged(trap, os.urandom(32))[attack]
    assert unpack(scope("from", b"w1"), frames, verifier) is None
    assert verifier.rejected == 1
    assert not trap.exists()


def test_a_replayed_message_is_refused(tmp_path: Path) -> None:
    """Even a message signed with the real session key is refused when its number was used."""
    trap = tmp_path / "pwned"
    session = os.urandom(32)
    verifier = Verifier(session)
    frames = result_frames(trap, session)
    first = unpack(scope("from", b"w1"), frames, verifier)
    assert isinstance(first, Result)  # the genuine message, once
    assert unpack(scope("from", b"w1"), frames, verifier) is None  # the same again: refused
    assert unpack(scope("from", b"w2"), frames, verifier) is None  # for another worker: refused
    assert verifier.rejected == 2
    assert not trap.exists()


def test_an_intruder_on_a_workers_direct_channel_is_ignored(
    attacked: envrunner.Runner, tmp_path: Path
) -> None:
    trap = tmp_path / "pwned"
    assert attacked.rundir is not None
    context = zmq.Context()
    peer = context.socket(zmq.PAIR)
    peer.setsockopt(zmq.LINGER, 1000)
    peer.connect(f"ipc://{attacked.rundir / 'dw1'}")
    peer.send_multipart(result_frames(trap, os.urandom(32)))
    peer.close()
    context.term()
    assert [attacked.call("same", faults.add, i, 2) for i in range(3)] == [2, 3, 4]
    assert not trap.exists()


def test_the_runtime_folder_and_its_sockets_are_private(attacked: envrunner.Runner) -> None:
    assert attacked.rundir is not None
    info = attacked.rundir.stat()
    assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700


def test_a_runner_refuses_a_folder_others_can_write(
    manifest_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unsafe = tmp_path / "shared"
    unsafe.mkdir()
    unsafe.chmod(0o777)  # writable by all, no sticky bit
    monkeypatch.setenv("ENVRUNNER_RUNDIR", str(unsafe))
    with envrunner.Runner(manifest_path, progress=False) as runner:
        with pytest.raises(envrunner.EnvrunnerError, match="other users can write there"):
            runner.call("same", faults.add, 1, 1)


def test_the_session_key_appears_in_no_command_line_or_environment(
    attacked: envrunner.Runner,
) -> None:
    broker = attacked._broker
    assert broker is not None
    secret = broker._key
    for pid in attacked.worker_pids():
        for name in ("cmdline", "environ"):
            data = Path(f"/proc/{pid}/{name}").read_bytes()
            assert secret not in data and secret.hex().encode() not in data


def test_envrunner_info_and_build_logs_keep_secrets_out(tmp_path: Path) -> None:
    manifest = tmp_path / "environments.yaml"
    manifest.write_text(
        "version: 1\nenvironments:\n  env:\n    python: '3.12'\n"
        "    requirements: ['envrunner-no-such-package-zz==1']\n"
        "    env: {API_TOKEN: 'sekrit-token'}\n"
        "    pip: {extra_index_urls: ['https://alice:sekrit-password@example.invalid/simple']}\n"
    )
    build = subprocess.run(
        [sys.executable, "-m", "envrunner", "build", "-m", str(manifest)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    info = subprocess.run(
        [sys.executable, "-m", "envrunner", "info", "env", "--json", "-m", str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    logs = [line for line in build.stderr.splitlines() if "full log:" in line]
    log_text = Path(logs[0].split("full log:")[1].strip()).read_text() if logs else ""
    for text in (build.stdout, build.stderr, info.stdout, info.stderr, log_text):
        assert "sekrit-token" not in text
        assert "sekrit-password" not in text
    assert "alice:***@example.invalid" in log_text


# --------------------------------------------------------------------------- fuzzing

KEY = b"k" * 32


@given(st.lists(st.binary(max_size=300), max_size=5))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_the_decoder_survives_arbitrary_frames(frames: list[bytes]) -> None:
    assert unpack(b"from:w1", frames, Verifier(KEY)) is None  # unsigned: dropped unread


headers = st.lists(
    st.one_of(
        st.integers(-(2**63), 2**64 - 1),
        st.binary(max_size=20),
        st.text(max_size=10),
        st.none(),
        st.booleans(),
    ),
    max_size=10,
)


@given(st.integers(min_value=0, max_value=9), headers, st.lists(st.binary(max_size=50), max_size=3))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_the_decoder_survives_any_validly_signed_header(
    tag: int, fields: list[Any], buffers: list[bytes]
) -> None:
    """What a peer holding the key can send: anything, but nothing may crash or hang us."""
    header = msgpack.packb([PROTOCOL_VERSION, tag, 1, *fields], use_bin_type=True)
    frames = [header, *buffers]
    signed = [Signer(KEY).sign(frames, b"from:w1"), *frames]
    try:
        unpack(b"from:w1", signed, Verifier(KEY))
    except ProtocolError:
        pass


def test_calls_travel_together_and_a_malformed_batch_is_dropped() -> None:
    calls = [Call(i, f"f{i}", b"code", b"args", ["seg"] if i else [], bool(i)) for i in (1, 2)]
    signer, verifier = Signer(KEY), Verifier(KEY)
    message = unpack(
        b"to:w1", pack(Calls([call_fields(c) for c in calls]), signer, b"to:w1"), verifier
    )
    assert isinstance(message, Calls) and message.unbatch() == calls
    for bad in ([], [[1, "f", b"", b""]], ["not a call"], 7):
        header = msgpack.packb([PROTOCOL_VERSION, Calls.TAG, 9, bad], use_bin_type=True)
        assert unpack(b"to:w1", [signer.sign([header], b"to:w1") + header], verifier) is None
    assert verifier.rejected == 4


def test_a_peer_of_another_protocol_version_is_told_to_upgrade() -> None:
    header = msgpack.packb([1, Calls.TAG, 1, []], use_bin_type=True)
    with pytest.raises(ProtocolError, match="protocol 1, this side 2: upgrade envrunner"):
        unpack(b"to:w1", [Signer(KEY).sign([header], b"to:w1") + header], Verifier(KEY))


@given(st.binary(max_size=400))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_the_value_decoder_fails_only_with_decode_error(body: bytes) -> None:
    try:
        Decoder().decode(body)
    except DecodeError:
        pass
