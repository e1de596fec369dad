"""The systems measured side by side: envrunner and what users would pick instead.

Each system runs ``bench_tasks.echo`` in a warm worker and offers the same three operations:

``call(value)``         one synchronous round trip
``run_many(n, value)``  submit ``n`` calls at once, then wait for all of them (pipelined)
``close()``             stop its workers

Systems whose package is missing raise :class:`UnavailableError` with the reason, and the section
that wanted them says so in a note instead of failing.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import bench_tasks

HERE = Path(__file__).resolve().parent
TINY = b"1"


class UnavailableError(Exception):
    """The system cannot run here (its package is missing); the message says why."""


class System:
    name = "system"

    def call(self, value: Any) -> Any:
        raise NotImplementedError

    def run_many(self, n: int, value: Any) -> None:
        for _ in range(n):
            self.call(value)

    def close(self) -> None:
        pass

    def pids(self) -> list[int]:
        return []


# --------------------------------------------------------------------------- envrunner


class Envrunner(System):
    """``@envrunner.task`` calls in an environment of a runner (entered as the active runner)."""

    def __init__(self, runner: Any, env: str, name: str | None = None) -> None:
        import envrunner

        self.name = name or f"envrunner ({env})"
        self.runner = runner
        self.env = env
        self.task = envrunner.task(env=env)(bench_tasks.echo)

    def call(self, value: Any) -> Any:
        return self.task(value)

    def run_many(self, n: int, value: Any) -> None:
        submit = self.task.submit
        futures = [submit(value) for _ in range(n)]
        for future in futures:
            future.result()

    def pids(self) -> list[int]:
        return list(self.runner.worker_pids(self.env))


class EnvrunnerRemote(System):
    """A worker started with ``envrunner worker`` on 127.0.0.1, joining over tcp with CurveZMQ.

    As an operator starts one on another machine: its own keys (``envrunner keys``), the runner
    listening on a loopback port with ``remote_envs``, the worker connecting with ``--keys`` and
    ``--client``. Loopback tcp and encryption, but no network between the two.
    """

    def __init__(self, manifest: Path, env: str, folder: Path, name: str) -> None:
        import envrunner

        keys = folder / "curve-keys"
        self.name = name
        self.env = env
        self.worker: subprocess.Popen[str] | None = None
        subprocess.run(
            [sys.executable, "-m", "envrunner", "keys", str(keys), "--client", "bench"],
            check=True,
            capture_output=True,
        )
        self.runner = envrunner.Runner(
            manifest, progress=False, listen="tcp://127.0.0.1:*", keys=keys, remote_envs=[env]
        )
        try:
            argv = [sys.executable, "-m", "envrunner", "worker", env, "-m", str(manifest)]
            argv += ["--connect", self.runner.remote_address, "--keys", str(keys)]
            self.worker = subprocess.Popen(
                [*argv, "--client", "bench"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            self.runner.call(env, bench_tasks.noop)  # waits until the worker joined
        except BaseException:
            self.close()
            raise

    def call(self, value: Any) -> Any:
        return self.runner.call(self.env, bench_tasks.echo, value)

    def run_many(self, n: int, value: Any) -> None:
        submit, env, echo = self.runner.submit, self.env, bench_tasks.echo
        futures = [submit(env, echo, value) for _ in range(n)]
        for future in futures:
            future.result()

    def close(self) -> None:
        self.runner.shutdown()
        if self.worker is not None:
            try:
                self.worker.wait(10)  # a remote worker leaves when its caller is gone
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
            if self.worker.stderr is not None:
                self.worker.stderr.close()

    def pids(self) -> list[int]:
        return [self.worker.pid] if self.worker is not None else []


# --------------------------------------------------------------------------- raw pyzmq


class RawZmq(System):
    """The floor: a DEALER sending raw frames to ``workers`` ROUTER echo servers over ipc.

    Arrays go as one zero-copy frame each way and come back as a read-only array over the
    received frame, which is as little as pyzmq can do.
    """

    def __init__(
        self, python: str, folder: Path, workers: int = 1, name: str = "", curve: bool = False
    ) -> None:
        import zmq

        self.name = name or "raw pyzmq"
        self.servers: list[subprocess.Popen[str]] = []
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        for option in (zmq.SNDHWM, zmq.RCVHWM):
            self.socket.setsockopt(option, 0)
        self.socket.setsockopt(zmq.LINGER, 0)
        environ = dict(os.environ)
        if curve:  # tcp on the loopback, encrypted as envrunner's remote workers are
            server_public, server_secret = zmq.curve_keypair()
            environ["ZMQ_ECHO_CURVE_SECRET"] = server_secret.decode("ascii")
            self.socket.curve_serverkey = server_public
            self.socket.curve_publickey, self.socket.curve_secretkey = zmq.curve_keypair()
        for index in range(workers):
            address = (
                "tcp://127.0.0.1:*"
                if curve
                else f"ipc://{folder}/zmq-echo-{os.getpid()}-{id(self)}-{index}"
            )
            server = subprocess.Popen(
                [python, str(HERE / "zmq_echo.py"), address],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=environ,
            )
            self.servers.append(server)
            assert server.stdout is not None
            ready, _, endpoint = server.stdout.readline().strip().partition(" ")
            if ready != "ready":
                raise RuntimeError(f"the pyzmq echo server for {address} did not start")
            self.socket.connect(endpoint)

    def call(self, value: Any) -> Any:
        if not hasattr(value, "dtype"):  # a tiny argument: one byte there and back
            self.socket.send(TINY, copy=False)
            return self.socket.recv(copy=False)
        np = sys.modules["numpy"]
        self.socket.send(value, copy=False)
        frame = self.socket.recv(copy=False)
        return np.frombuffer(frame.buffer, dtype=value.dtype).reshape(value.shape)

    def run_many(self, n: int, value: Any) -> None:
        send, recv = self.socket.send, self.socket.recv
        value = value if hasattr(value, "dtype") else TINY
        for _ in range(n):
            send(value, copy=False)
        for _ in range(n):
            recv(copy=False)

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()
        for server in self.servers:
            assert server.stdin is not None
            server.stdin.close()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            if server.stdout is not None:
                server.stdout.close()

    def pids(self) -> list[int]:
        return [server.pid for server in self.servers]


# --------------------------------------------------------------------------- stdlib pools


def _spawn_context() -> Any:
    import multiprocessing

    # Never fork a process that runs a broker thread and has imported numpy: fresh interpreters,
    # as envrunner's workers are.
    return multiprocessing.get_context("spawn")


class MpPool(System):
    """``multiprocessing.Pool.apply`` (spawn context)."""

    def __init__(self, workers: int = 1) -> None:
        self.name = "multiprocessing.Pool" + (f" ({workers} workers)" if workers > 1 else "")
        self.pool = _spawn_context().Pool(workers)
        self.pool.apply(bench_tasks.noop)

    def call(self, value: Any) -> Any:
        return self.pool.apply(bench_tasks.echo, (value,))

    def run_many(self, n: int, value: Any) -> None:
        submit = self.pool.apply_async
        results = [submit(bench_tasks.echo, (value,)) for _ in range(n)]
        for result in results:
            result.get()

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

    def pids(self) -> list[int]:
        return [process.pid for process in self.pool._pool]  # type: ignore[attr-defined]


class Executor(System):
    """``concurrent.futures.ProcessPoolExecutor`` (spawn context)."""

    def __init__(self, workers: int = 1) -> None:
        self.name = "ProcessPoolExecutor" + (f" ({workers} workers)" if workers > 1 else "")
        self.executor = ProcessPoolExecutor(workers, mp_context=_spawn_context())
        self.executor.submit(bench_tasks.noop).result()

    def call(self, value: Any) -> Any:
        return self.executor.submit(bench_tasks.echo, value).result()

    def run_many(self, n: int, value: Any) -> None:
        submit = self.executor.submit
        futures = [submit(bench_tasks.echo, value) for _ in range(n)]
        for future in futures:
            future.result()

    def close(self) -> None:
        self.executor.shutdown(wait=True)


# --------------------------------------------------------------------------- execnet

_EXECNET_LOOP = """
while True:
    item = channel.receive()
    if item is None:
        break
    channel.send(item)
"""


class Execnet(System):
    """execnet gateways (``popen``), one channel each, answering in a loop."""

    def __init__(self, python: str, workers: int = 1) -> None:
        try:
            import execnet
        except ImportError as exc:
            raise UnavailableError(
                f"execnet is not installed ({exc}): pip install -e '.[bench]'"
            ) from None
        self.name = "execnet" + (f" ({workers} workers)" if workers > 1 else "")
        self.gateways = [execnet.makegateway(f"popen//python={python}") for _ in range(workers)]
        self.channels = [gateway.remote_exec(_EXECNET_LOOP) for gateway in self.gateways]
        self.next = 0

    def call(self, value: Any) -> Any:
        channel = self.channels[self.next]
        self.next = (self.next + 1) % len(self.channels)
        channel.send(value)
        return channel.receive()

    def run_many(self, n: int, value: Any) -> None:
        count = len(self.channels)
        for index in range(n):
            self.channels[index % count].send(value)
        for index in range(n):
            self.channels[index % count].receive()

    def close(self) -> None:
        for channel in self.channels:
            channel.send(None)
            channel.waitclose(10)
        for gateway in self.gateways:
            gateway.exit()

    def pids(self) -> list[int]:
        return [
            gateway.remote_exec("import os; channel.send(os.getpid())").receive()
            for gateway in self.gateways
        ]


# --------------------------------------------------------------------------- Ray

_ray_lock = threading.Lock()
_ray_started = False


def ray_module(folder: Path) -> Any:
    """Ray, started once per run on this machine's cores (its dashboard off)."""
    global _ray_started
    try:
        import ray
    except ImportError as exc:
        raise UnavailableError(
            f"ray is not installed ({exc}): pip install -e '.[bench-ray]'"
        ) from None
    with _ray_lock:
        if not _ray_started:
            import cloudpickle

            # Ray's workers cannot import the benchmark's modules: send the functions by value.
            cloudpickle.register_pickle_by_value(bench_tasks)
            ray.init(
                num_cpus=os.cpu_count() or 2,
                include_dashboard=False,
                log_to_driver=False,
                logging_level="ERROR",
                _temp_dir=str(folder),
            )
            _ray_started = True
    return ray


def stop_ray() -> None:
    global _ray_started
    with _ray_lock:
        if _ray_started:
            import ray

            ray.shutdown()
            _ray_started = False


class RayTasks(System):
    """Ray tasks: ``ray.get(echo.remote(value))``."""

    def __init__(self, folder: Path) -> None:
        self.ray = ray_module(folder)
        self.name = "Ray tasks"
        self.remote = self.ray.remote(bench_tasks.echo)
        self.ray.get([self.remote.remote(0) for _ in range(8)])

    def call(self, value: Any) -> Any:
        return self.ray.get(self.remote.remote(value))

    def run_many(self, n: int, value: Any) -> None:
        remote = self.remote.remote
        self.ray.get([remote(value) for _ in range(n)])


class RayActors(System):
    """Ray actor method calls, round robin over ``workers`` actors."""

    def __init__(self, folder: Path, workers: int = 1) -> None:
        self.ray = ray_module(folder)
        self.name = "Ray actors" if workers > 1 else "Ray actor"
        if workers > 1:
            self.name += f" ({workers})"
        actor_class = self.ray.remote(bench_tasks.Echo)
        self.actors = [actor_class.remote() for _ in range(workers)]
        self.ray.get([actor.echo.remote(0) for actor in self.actors])
        self.next = 0

    def call(self, value: Any) -> Any:
        actor = self.actors[self.next]
        self.next = (self.next + 1) % len(self.actors)
        return self.ray.get(actor.echo.remote(value))

    def run_many(self, n: int, value: Any) -> None:
        count = len(self.actors)
        self.ray.get([self.actors[i % count].echo.remote(value) for i in range(n)])

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)

    def pids(self) -> list[int]:
        return [int(self.ray.get(actor.pid.remote())) for actor in self.actors]


# --------------------------------------------------------------------------- a new interpreter


class NewInterpreter(System):
    """A new interpreter per call: ``subprocess.run`` with the call pickled on stdin."""

    def __init__(self, python: str) -> None:
        self.name = "subprocess + pickle"
        self.python = python

    def call(self, value: Any) -> Any:
        result = subprocess.run(
            [self.python, str(HERE / "call_once.py")],
            input=pickle.dumps((bench_tasks.echo, (value,)), protocol=5),
            capture_output=True,
            check=True,
            cwd=HERE,
        )
        return pickle.loads(result.stdout)


# --------------------------------------------------------------------------- helpers


def make(factory: Callable[[], System], skipped: Callable[[str, str], None], name: str) -> Any:
    """Build a system, or note why it is skipped and return None."""
    try:
        return factory()
    except UnavailableError as exc:
        skipped(name, str(exc))
        return None


def wait_all(futures: list[Future[Any]]) -> None:
    for future in futures:
        future.result()
