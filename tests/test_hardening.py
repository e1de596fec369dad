"""Issue 20, hardening: what an adversarial probe of the landed code found, each as a test.

The session key cannot be read through /proc, secret keys are private from their first byte,
processes a task leaves behind die with the runner, large plain values travel or fail at the
sender with the limit and the way around it, a full /dev/shm falls back to frames, the home
ignores the umask, manifests cannot smuggle installer options, and a remote worker whose keys
are refused says so and stops.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import faults
import pytest
import tasks
from support import WriteManifest, small_tmpfs, wait_for

import envrunner
from envrunner._keys import create_keys


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


# --------------------------------------------------------------------------- the session key


def key_fd_of(pid: int) -> int:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(argv[argv.index(b"--key-fd") + 1])


def test_the_session_key_cannot_be_read_through_proc(runner: envrunner.Runner) -> None:
    # What the attacker did to a pipe: open the worker's end again through /proc and read.
    # Proof that the attack works on a pipe (the old way): a child holding one, unread.
    read_end, write_end = os.pipe()
    os.write(write_end, b"k" * 32)
    holder = subprocess.Popen(["sleep", "60"], pass_fds=(read_end,))
    try:
        with open(f"/proc/{holder.pid}/fd/{read_end}", "rb", buffering=0) as stolen:
            assert stolen.read(32) == b"k" * 32
    finally:
        holder.kill()
        holder.wait()
        os.close(read_end)
        os.close(write_end)
    # A worker's key channel is a socket: /proc/PID/fd/N cannot be opened at all.
    assert runner.call("same", faults.add, 1, 1) == 2
    pids = runner.worker_pids()
    assert pids
    for pid in pids:
        fd = key_fd_of(pid)
        assert os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        with pytest.raises(OSError) as refused:
            os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY)
        assert refused.value.errno == errno.ENXIO


# --------------------------------------------------------------------------- envrunner keys


def test_secret_keys_are_never_seen_open_to_others(tmp_path: Path) -> None:
    """Another user read 21 of 80 secret files between their creation (0644) and a chmod:
    watch every file of the folder while 80 client keys are made under umask 000."""
    folder = tmp_path / "keys"
    seen: dict[str, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for parent in (folder, folder / "clients"):
                try:
                    names = os.listdir(parent)
                except OSError:
                    continue
                for name in names:
                    try:
                        mode = os.stat(parent / name).st_mode
                    except OSError:
                        continue
                    seen[name] = seen.get(name, 0) | stat.S_IMODE(mode)

    watcher = threading.Thread(target=watch)
    old = os.umask(0)
    watcher.start()
    try:
        created = create_keys(folder, [f"client{n}" for n in range(80)])
    finally:
        done.set()
        watcher.join()
        os.umask(old)
    secrets = [path for path in created if path.name.endswith("key_secret")]
    assert len(secrets) == 81
    for path in [*secrets, folder / "session.key"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert not seen.get(path.name, 0) & 0o077, f"{path.name} was seen {oct(seen[path.name])}"
    for path in (folder, folder / "clients"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "broker.key").stat().st_mode) == 0o644
    # The keys load as CurveZMQ certificates.
    import zmq.auth

    public, secret = zmq.auth.load_certificate(str(folder / "client3.key_secret"))
    assert secret and zmq.auth.load_certificate(str(folder / "clients/client3.key"))[0] == public


def test_keys_refuse_a_folder_others_can_write(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(envrunner.EnvrunnerError, match="other users can write there"):
        create_keys(folder, ["a"])
    assert not list(folder.iterdir())


# --------------------------------------------------------------------------- cleanup


def test_processes_a_task_leaves_behind_die_at_shutdown(manifest_path: Path) -> None:
    with envrunner.Runner(manifest_path, progress=False) as runner:
        children = runner.call("same", faults.leave_children)
        assert all(running(pid) for pid in children)
    wait_for(lambda: not any(running(pid) for pid in children), timeout=10, what="children to die")


def test_processes_a_task_leaves_behind_die_when_its_worker_is_killed(
    manifest_path: Path,
) -> None:
    with envrunner.Runner(manifest_path, progress=False, heartbeat_timeout=None) as runner:
        children = runner.call("other", faults.leave_children)
        task = envrunner.task(env="other", timeout=1.0)(faults.run)
        with pytest.raises(envrunner.TaskTimeoutError):
            runner.call("other", task, "hang")  # the worker is killed at the timeout
        wait_for(lambda: not any(running(pid) for pid in children), timeout=10, what="children")


# --------------------------------------------------------------------------- large plain values

MB70 = 70 * 1000 * 1000


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "frames"])
@pytest.mark.parametrize("kind", ["bytes", "str", "floats"])
def test_plain_values_above_64_mib_travel_both_ways(
    manifest_path: Path, kind: str, shared_memory: bool
) -> None:
    """70 MB of bytes, a str, a list of 8 M floats: as a result and as an argument."""
    threshold = 256 * 1024 if shared_memory else 0
    with envrunner.Runner(manifest_path, progress=False, shm_threshold=threshold) as runner:
        value = runner.call("other", faults.plain_value, kind, MB70)
        assert faults.measure(value) == faults.measure(faults.plain_value(kind, MB70))
        assert runner.call("other", faults.measure, value) == faults.measure(value)
        assert runner.rejected_messages == 0


def test_an_array_above_the_frame_limit_fails_at_the_sender(manifest_path: Path) -> None:
    """A 1.5 GB array with shared memory off: a frame over 1 GiB, which the receiver would
    drop unread. Both ways it fails where it is sent, naming the limit and the ways around."""
    import numpy

    huge = numpy.zeros(1_500_000_000, dtype=numpy.uint8)  # untouched pages: no memory used
    with envrunner.Runner(manifest_path, progress=False, shm_threshold=0) as runner:
        with pytest.raises(envrunner.EncodeError) as sending:
            runner.call("same", faults.take, huge)
        assert "1,073,741,824 bytes, max_message_bytes" in str(sending.value)
        assert "turn shared memory on" in str(sending.value)
        with pytest.raises(envrunner.EncodeError) as returning:
            runner.call("same", faults.zeros, 1_500_000_000)
        assert "cannot be sent back" in str(returning.value)
        assert "1,073,741,824 bytes, max_message_bytes" in str(returning.value)
        assert runner.call("same", faults.add, 1, 1) == 2
        assert runner.rejected_messages == 0


def test_a_result_above_a_small_frame_limit_fails_in_the_worker(manifest_path: Path) -> None:
    with envrunner.Runner(
        manifest_path, progress=False, shm_threshold=0, max_message_bytes=4 << 20
    ) as runner:
        with pytest.raises(envrunner.EncodeError, match="4,194,304 bytes, max_message_bytes"):
            runner.call("same", faults.zeros, 8 << 20)
        with pytest.raises(envrunner.EncodeError, match="4,194,304 bytes, max_message_bytes"):
            runner.call("same", faults.plain_value, "bytes", 8 << 20)
        assert runner.call("same", faults.add, 1, 1) == 2
        assert runner.rejected_messages == 0


def test_a_frame_over_2_gib_is_signed_and_verified() -> None:
    """hmac.digest raises OverflowError above 2 GiB - 1: the worker died returning 2 GB."""
    from envrunner._runtime.protocol import Signer, Verifier

    huge = bytes(2**31 + 1)  # calloc'd: its pages are never written
    signer, verifier = Signer(b"k" * 32), Verifier(b"k" * 32)
    assert verifier._signer.sign([huge], b"s") == signer.sign([huge], b"s")
    assert len(signer.sign([memoryview(huge)])) == 32


# --------------------------------------------------------------------------- full /dev/shm


@pytest.fixture
def tiny_shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A 1 MiB tmpfs as the shared-memory folder (the test runs as root)."""
    with small_tmpfs(tmp_path / "shm", "size=1M") as folder:
        monkeypatch.setenv("ENVRUNNER_SHM_DIR", str(folder))
        yield folder


def test_a_full_shared_memory_folder_falls_back_to_frames(
    manifest_path: Path, tiny_shm: Path
) -> None:
    import numpy

    array = numpy.arange(1_000_000, dtype=numpy.float64)  # 8 MB: cannot fit in 1 MiB
    with envrunner.Runner(manifest_path, progress=False, shm_threshold=64 * 1024) as runner:
        assert runner.shm_threshold == 64 * 1024
        stats = runner.call("same", tasks.array_stats, array)
        assert stats["sum"] == float(array.sum())
        back = runner.call("same", faults.zeros, 8_000_000)
        assert back.nbytes == 8_000_000 and not back.any()
        assert runner.call("same", faults.plain_value, "bytes", MB70) == b"x" * MB70
        assert runner.rejected_messages == 0


def test_an_arena_in_a_full_folder_gives_its_block_back_and_the_value_goes_in_frames(
    tiny_shm: Path,
) -> None:
    import numpy

    from envrunner._runtime.codec import Decoder, Encoder
    from envrunner._runtime.shm import Arena, Mapper

    arena = Arena(f"envrunner-{os.getpid()}-{os.getpid()}.full")
    mapper = Mapper(arena.free)
    try:
        encoder = Encoder(arena=arena, threshold=1024)
        value = [numpy.full(600_000, n, dtype=numpy.uint8) for n in (1, 2, 3)]
        body, frames = encoder.encode(value)
        assert encoder.shm_full
        assert len(encoder.blocks) == 1 and len(frames) == 2  # the 1 MiB held only the first
        assert arena.in_use() == 600_000
        decoded = Decoder(mapper=mapper).decode(body, frames)
        assert [int(array.sum()) for array in decoded] == [600_000 * n for n in (1, 2, 3)]
    finally:
        mapper.close()
        arena.close()


# --------------------------------------------------------------------------- manifest input


@pytest.mark.parametrize(
    ("requirement", "fix"),
    [
        ("-e /tmp", "NAME @ file:///ABSOLUTE/PATH"),
        ("--editable=/tmp", "NAME @ file:///ABSOLUTE/PATH"),
        ("--index-url=https://example.invalid/simple", "under the 'pip:' key"),
        ("--extra-index-url https://example.invalid/simple", "under the 'pip:' key"),
        ("-r other.txt", "under the 'pip:' key"),
    ],
)
def test_an_installer_option_is_not_a_requirement(
    write_manifest: Any, requirement: str, fix: str
) -> None:
    path = write_manifest(
        f"""\
        version: 1
        environments:
          a:
            python: "3.12"
            requirements:
              - six
              - "{requirement}"
        """
    )
    with pytest.raises(envrunner.ManifestError) as caught:
        envrunner.load_manifest(path)
    text = str(caught.value)
    assert f"{path.name}:7: environments.a.requirements[1]" in text
    assert "is an installer option" in text and fix in text


@pytest.mark.parametrize("style", ["flow", "block"])
def test_deep_nesting_is_a_manifest_error_at_its_line(
    write_manifest: WriteManifest, style: str
) -> None:
    depth = 5000
    if style == "flow":
        value = "[" * depth + "1" + "]" * depth
    else:
        value = "".join(f"\n{'  ' * (n + 3)}k{n}:" for n in range(depth)) + " 1"
    path = write_manifest(f"version: 1\nenvironments:\n  a:\n    requirements: {value}\n")
    with pytest.raises(envrunner.ManifestError) as caught:
        envrunner.load_manifest(path)
    assert f"{path.name}:" in str(caught.value)
    assert "nested deeper than 100 levels" in str(caught.value)


# --------------------------------------------------------------------------- the home and umask

UMASK_SCRIPT = """
import os, sys
os.umask(0)
sys.path.insert(0, {tests!r})
import envrunner, faults
with envrunner.Runner({manifest!r}, progress=False) as runner:
    print(runner.call("small", faults.site_packages))
"""


def others_can_create_in(folder: Path) -> bool:
    """Whether the unprivileged user ``nobody`` can create a file in ``folder``."""
    planted = folder / "planted.pth"
    attempt = subprocess.run(
        ["/bin/sh", "-c", f"echo 'import os' > '{planted}'"],
        user="nobody",
        capture_output=True,
        check=False,
    )
    found = planted.exists()
    planted.unlink(missing_ok=True)
    return attempt.returncode == 0 and found


def test_the_home_is_private_under_umask_000(tmp_path: Path) -> None:
    """Under umask 000 another user planted a .pth that ran in our worker: now nobody else can
    enter the home, and a folder that others could write is never used."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="envrunner-umask-"))  # /tmp: others may enter it
    try:
        base.chmod(0o755)
        home = base / "home"
        manifest = base / "environments.yaml"
        manifest.write_text('version: 1\nenvironments:\n  small:\n    python: "3.12"\n')
        manifest.chmod(0o644)
        script = UMASK_SCRIPT.format(tests=str(Path(__file__).parent), manifest=str(manifest))
        ran = subprocess.run(
            [sys.executable, "-c", script],
            env=dict(os.environ, ENVRUNNER_HOME=str(home)),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        site_packages = Path(ran.stdout.strip().splitlines()[-1])
        assert home in site_packages.parents
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for name in ("envs", "runtime", "names"):
            assert stat.S_IMODE((home / name).stat().st_mode) == 0o700, name
        assert not others_can_create_in(site_packages)
        # The attack as it was: the same folders, open as the umask made them.
        for folder in (home, home / "envs"):
            folder.chmod(0o777)
        assert stat.S_IMODE(site_packages.stat().st_mode) == 0o777  # uv follows the umask
        assert others_can_create_in(site_packages)
        # ... and such a home is refused, naming the folder and the fix.
        refused = subprocess.run(
            [sys.executable, "-c", script],
            env=dict(os.environ, ENVRUNNER_HOME=str(home)),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert refused.returncode != 0
        assert f"refusing ENVRUNNER_HOME {home}: others can write to it" in refused.stderr
        assert f"chmod 700 {home}" in refused.stderr
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_a_home_that_is_not_ours_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envrunner import _home

    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)  # nobody's
    monkeypatch.setenv("ENVRUNNER_HOME", str(theirs))
    with pytest.raises(envrunner.EnvrunnerError, match="not yours"):
        _home.home()


# --------------------------------------------------------------------------- refused keys


@pytest.fixture(scope="module")
def two_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The caller's keys folder, and another one made apart (a client the caller never saw)."""
    ours, theirs = tmp_path_factory.mktemp("ours"), tmp_path_factory.mktemp("theirs")
    create_keys(ours, ["gpu1"])
    create_keys(theirs, ["stranger"])
    return ours, theirs


def run_runtime_worker(
    address: str, session: Path, server_key: Path, client_secret: Path, timeout: float = 3.0
) -> subprocess.CompletedProcess[str]:
    """``python -m envrunner.worker`` as ``envrunner worker`` starts it, with a start timeout."""
    from envrunner._process import runtime_root

    argv = [sys.executable, "-m", "envrunner.worker", "--connect", address, "--id", "r-test-1"]
    argv += ["--env", "modern", "--key-file", str(session), "--start-timeout", str(timeout)]
    argv += ["--curve-server-key", str(server_key), "--curve-client-key", str(client_secret)]
    return subprocess.run(
        argv, cwd=runtime_root(), capture_output=True, text=True, timeout=60, check=False
    )


def listening(manifest_path: Path, keys: Path) -> envrunner.Runner:
    return envrunner.Runner(
        manifest_path,
        progress=False,
        listen="tcp://127.0.0.1:*",
        keys=keys,
        remote_envs=["modern"],
    )


def test_a_worker_whose_key_is_refused_says_so_and_stops(
    manifest_path: Path, two_keys: tuple[Path, Path]
) -> None:
    ours, theirs = two_keys
    with listening(manifest_path, ours) as runner:
        ran = run_runtime_worker(
            runner.remote_address,
            ours / "session.key",
            ours / "broker.key",
            theirs / "stranger.key_secret",
        )
    assert ran.returncode == 77, ran.stderr
    assert f"waiting for the caller at {runner.remote_address}" in ran.stderr
    assert "refused this worker's key" in ran.stderr and "stranger.key_secret" in ran.stderr
    assert "no caller welcomed this worker within 3 s" in ran.stderr
    assert ran.stderr.count("refused this worker's key") == 2  # when seen, and at the end


def test_a_worker_with_another_broker_key_says_the_handshake_failed(
    manifest_path: Path, two_keys: tuple[Path, Path]
) -> None:
    ours, theirs = two_keys
    with listening(manifest_path, ours) as runner:
        ran = run_runtime_worker(
            runner.remote_address,
            ours / "session.key",
            theirs / "broker.key",
            ours / "gpu1.key_secret",
        )
    assert ran.returncode == 77, ran.stderr
    assert "the secure handshake with" in ran.stderr and "broker.key" in ran.stderr


def test_a_worker_with_another_session_key_says_the_caller_did_not_answer(
    manifest_path: Path, two_keys: tuple[Path, Path]
) -> None:
    ours, theirs = two_keys
    with listening(manifest_path, ours) as runner:
        ran = run_runtime_worker(
            runner.remote_address,
            theirs / "session.key",
            ours / "broker.key",
            ours / "gpu1.key_secret",
        )
        assert runner.rejected_messages >= 1
    assert ran.returncode == 77, ran.stderr
    assert "connected to" in ran.stderr
    assert "check that session.key is the caller's" in ran.stderr


def test_a_worker_where_nothing_listens_says_so_and_stops(two_keys: tuple[Path, Path]) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ours, _ = two_keys
    ran = run_runtime_worker(
        f"tcp://127.0.0.1:{port}",
        ours / "session.key",
        ours / "broker.key",
        ours / "gpu1.key_secret",
        timeout=2.0,
    )
    assert ran.returncode == 77, ran.stderr
    assert f"nothing answers at tcp://127.0.0.1:{port}" in ran.stderr


def test_envrunner_worker_says_its_key_was_refused(
    manifest_path: Path, two_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """The command an operator runs: the refusal is on its stderr within seconds."""
    import shutil

    ours, theirs = two_keys
    mixed = tmp_path / "keys"  # the caller's broker and session keys, a stranger's pair
    mixed.mkdir(mode=0o700)
    for name in ("broker.key", "session.key"):
        shutil.copy2(ours / name, mixed / name)
    shutil.copy2(theirs / "stranger.key_secret", mixed / "stranger.key_secret")
    with listening(manifest_path, ours) as runner:
        argv = [sys.executable, "-m", "envrunner", "worker", "modern", "-m", str(manifest_path)]
        argv += ["--connect", runner.remote_address, "--keys", str(mixed), "--client", "stranger"]
        worker = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert worker.stderr is not None
        try:
            lines = []
            for line in worker.stderr:
                lines.append(line)
                if "refused this worker's key" in line:
                    break
            assert "refused this worker's key" in "".join(lines), "".join(lines)
        finally:
            os.killpg(worker.pid, 9)
            worker.communicate(timeout=30)


def test_the_caller_logs_each_refused_key_once(
    two_keys: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    import zmq
    import zmq.auth

    from envrunner._keys import start_authenticator

    ours, theirs = two_keys
    context = zmq.Context()
    public, secret = zmq.auth.load_certificate(str(ours / "broker.key_secret"))
    authenticator, refused = start_authenticator(context, ours)
    router = context.socket(zmq.ROUTER)
    router.curve_secretkey, router.curve_publickey, router.curve_server = secret, public, True
    port = router.bind_to_random_port("tcp://127.0.0.1")
    peers = []
    try:
        stranger_file = theirs / "stranger.key_secret"
        for secret_file in (stranger_file, stranger_file, ours / "gpu1.key_secret"):
            peer = context.socket(zmq.DEALER)
            peer.setsockopt(zmq.LINGER, 0)
            peer.curve_serverkey = public
            peer.curve_publickey, peer.curve_secretkey = zmq.auth.load_certificate(str(secret_file))
            peer.connect(f"tcp://127.0.0.1:{port}")
            peer.send(secret_file.name.encode())
            peers.append(peer)
        assert router.poll(10_000), "the admitted worker's message never arrived"
        assert router.recv_multipart()[-1] == b"gpu1.key_secret"
        wait_for(lambda: len(refused.refused) >= 2, what="both refusals to be recorded")
        stranger = zmq.auth.load_certificate(str(stranger_file))[0].decode()
        warnings = [r for r in caplog.records if "refused a worker whose public key" in r.message]
        assert len(warnings) == 1 and stranger in warnings[0].message
        assert str(ours / "clients") in warnings[0].message
        assert stranger in refused.summary() and "not in" in refused.summary()
        assert not router.poll(200)  # nothing from the stranger ever arrives
    finally:
        for peer in peers:
            peer.close()
        router.close(linger=0)
        authenticator.stop()
        context.term()


CALLER_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
import envrunner, faults
runner = envrunner.Runner({manifest!r}, progress=False)
print(*runner.call("same", faults.leave_children), flush=True)
time.sleep(600)
"""


def test_processes_a_task_leaves_behind_die_when_the_caller_is_killed(
    manifest_path: Path,
) -> None:
    script = CALLER_SCRIPT.format(tests=str(Path(__file__).parent), manifest=str(manifest_path))
    caller = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert caller.stdout is not None
    children = [int(pid) for pid in caller.stdout.readline().split()]
    try:
        assert len(children) == 2 and all(running(pid) for pid in children)
    finally:
        os.killpg(caller.pid, 9)  # kill -9 of the caller (and of nothing it did not start)
        caller.communicate(timeout=30)
    wait_for(lambda: not any(running(pid) for pid in children), timeout=10, what="children")


def test_a_2_gb_bytes_value_fails_at_the_sender_when_it_cannot_travel() -> None:
    from envrunner._runtime.codec import Encoder

    with pytest.raises(envrunner.EncodeError) as caught:
        Encoder(max_frame=1 << 30).encode(bytes(2**31))
    assert "a value of 2,147,483,653 bytes is larger than" in str(caught.value)
    assert "1,073,741,824 bytes, max_message_bytes" in str(caught.value)
