"""The broker's table of workers' I/O: launching them, their pipes and pidfds in the poll set,
their output, and freeing what a gone one held.

::

    Start(env, ident) ─► launch(): a direct channel, a started-call record, Launcher.launch
                         ─► WorkerIO; its stdout/stderr and pidfd join the broker's poll set
    poll says fd ready ─► ready(fd): output forwarded, or "exit" for the broker to reap
    Forget(ident)      ─► forget(): fds out of the poll set, channels closed, arena blocks
                         of calls that will not travel again freed, shared memory unlinked

It decides nothing: the scheduler does. Only the broker's thread (or a calling thread holding
the broker's lock, for a worker it let go of) uses it.

May import: the standard library, zmq, ``envrunner._actions``, ``_calls``, ``_channels``,
``_gate``, ``_process``, ``_runtime``.

Workers elsewhere (a launcher that is not ``local``) get the tcp door's address and router
instead of the ipc socket, and no direct channel or started-call record.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import zmq

from ._actions import CallState
from ._calls import CallRequest, Prepared
from ._channels import DirectChannel, Output, WorkerIO
from ._gate import DOMAIN
from ._process import Launcher, LaunchRequest, worker_environ
from ._runtime.protocol import Verifier, scope
from ._runtime.shm import Arena, Mapper, unlink_owned

__all__ = ["RunFolderFullError", "Workers"]

log = logging.getLogger("envrunner.broker")


class RunFolderFullError(OSError):
    """A worker's files cannot be made in the run folder (a full disk, no inodes left): its
    message names the file and the fix."""


class Workers:
    """Every worker's I/O, by identity."""

    def __init__(
        self,
        *,
        poller: zmq.Poller,
        context: zmq.Context[Any],
        router: zmq.Socket[Any],
        address: str,
        rundir: Path,
        key: bytes,
        launcher: Launcher,
        launchers: Mapping[str, Launcher],
        runtime_root: Callable[[], Path],
        verifier: Verifier,
        arena: Arena | None,
        mapper: Mapper | None,
        max_message: int,
        door: tuple[zmq.Socket[Any], str] | None = None,
    ) -> None:
        self.io: dict[bytes, WorkerIO] = {}
        self.rejected_by_gone = 0  # counted on the direct channels of workers now gone
        self._fds: dict[int, tuple[bytes, str]] = {}
        self._poller = poller
        self._context = context
        self._router = router
        self._address = address
        self._rundir = rundir
        self._key = key
        self._launcher = launcher  # per environment: launchers, else this one
        self._launchers = dict(launchers)
        self._door = door  # (router, address): the tcp door of workers elsewhere
        self._runtime_root = runtime_root
        self._verifier = verifier
        self._arena = arena
        self._mapper = mapper
        self._max_message = max_message

    def launch(self, env: str, ident: bytes, prepared: Prepared) -> WorkerIO:
        """Start a worker of ``env`` under this identity.

        Raises:
            OSError: It could not be started (its interpreter is gone, no descriptors left).
        """
        number = ident.decode()
        launcher = self._launchers.get(env, self._launcher)
        if not launcher.local:
            return self._launch_elsewhere(launcher, env, ident, prepared)
        started = self._rundir / f"s{number}"
        try:
            direct = DirectChannel(
                self._context,
                f"ipc://{self._rundir / ('d' + number)}",
                self._key,
                ident,
                self._max_message,
                DOMAIN,  # only this process's children may connect (``_gate.py``)
            )
        except zmq.ZMQError as exc:  # no room for the socket: the broker's thread lives on
            raise self._no_room(exc.errno, self._rundir / ("d" + number)) from exc
        request = LaunchRequest(
            env=env,
            python=prepared.python,
            address=self._address,
            worker_id=number,
            key=self._key,
            environ=worker_environ(
                os.environ, prepared.bin_dir, prepared.virtual_env, prepared.environ
            ),
            runtime_root=self._runtime_root(),
            append_paths=prepared.append_paths,
            direct_address=direct.address,
            max_message=self._max_message,
            started_path=str(started),
        )
        try:
            try:
                started.write_bytes(bytes(8))
            except OSError as exc:
                raise self._no_room(exc.errno, started) from exc
            process = launcher.launch(request)
        except Exception:  # (any: the outbox turns it into a failed start)
            direct.close()
            started.unlink(missing_ok=True)
            raise
        output = Output(env, process.stdout_fd, process.stderr_fd)
        io = WorkerIO(ident, env, process, self._router, output, direct, started)
        direct.watch(process.pidfd)
        self.add(io)
        log.debug("started %r", io)
        return io

    def _no_room(self, code: int | None, path: Path) -> OSError:
        """The error of a worker whose files cannot be made in the run folder (a full disk)."""
        code = code or 0
        return RunFolderFullError(
            code,
            f"{os.strerror(code)}: cannot make {path} in the runner's folder. Free space (and "
            f"inodes: df -i) in {self._rundir.parent}, or start the program with "
            "ENVRUNNER_RUNDIR (or TMPDIR) set to a folder with room",
        )

    def _launch_elsewhere(
        self, launcher: Launcher, env: str, ident: bytes, prepared: Prepared
    ) -> WorkerIO:
        """A worker on another machine (a Slurm job, over ssh): it connects to the tcp door
        under the identity the scheduler chose; no direct channel, no shared memory."""
        if self._door is None:
            raise OSError("the broker has no tcp door for workers on other machines")
        router, address = self._door
        request = LaunchRequest(
            env=env,
            python=prepared.python,
            address=address,
            worker_id=ident.decode(),
            key=b"",  # it reads the run's keys itself: never through the launcher
            environ={},
            runtime_root=self._runtime_root(),
            max_message=self._max_message,
        )
        process = launcher.launch(request)
        io = WorkerIO(
            ident, env, process, router, Output(env, process.stdout_fd, process.stderr_fd)
        )
        self.add(io)
        log.debug("launched %r elsewhere", io)
        return io

    def close_launchers(self) -> None:
        """The broker is done: each launcher makes sure nothing it started is left running."""
        for launcher in {id(x): x for x in [self._launcher, *self._launchers.values()]}.values():
            launcher.close()

    def add(self, io: WorkerIO) -> None:
        """Watch a worker's pipes and exit (a joined worker has none here)."""
        self.io[io.ident] = io
        for kind, fd in io.output.fds.items():
            if fd >= 0:
                self._fds[fd] = (io.ident, kind)
                self._poller.register(fd, zmq.POLLIN)
        if io.process.pidfd >= 0:
            self._fds[io.process.pidfd] = (io.ident, "exit")
            self._poller.register(io.process.pidfd, zmq.POLLIN)

    def ready(self, fd: int) -> WorkerIO | None:
        """A watched fd is readable: forward its output; the worker if it exited."""
        entry = self._fds.get(fd)
        if entry is None:
            return None
        ident, kind = entry
        io = self.io[ident]
        if kind == "exit":
            return io
        if not io.output.read(kind):
            self._close_stream(io, kind)
        return None

    def drain_output(self, io: WorkerIO, to_the_end: bool = False) -> None:
        """Forward what the worker wrote so far (before its result: output comes first); one
        poll(2) says whether there is any, unless ``to_the_end`` (it exited: read to EOF)."""
        if not to_the_end and not io.output.pending():
            return
        for kind, open_ in list(io.output.open.items()):
            if open_ and not io.output.read(kind):
                self._close_stream(io, kind)

    def unwatch(self, io: WorkerIO) -> None:
        """It exited: read the last of its output, and stop watching it."""
        self.drain_output(io, to_the_end=True)
        for kind in ("out", "err"):
            self._close_stream(io, kind)
        self._unwatch(io.process.pidfd)

    def forget(self, ident: bytes) -> None:
        """A worker is gone: free what it held."""
        io = self.io.pop(ident, None)
        if io is None:
            return
        for fd in [*io.output.fds.values(), io.process.pidfd]:
            self._unwatch(fd)
        if io.direct is not None:
            self.rejected_by_gone += io.direct.verifier.rejected
            io.direct.close()
        io.process.close()
        # Calls it never started travel again, with their blocks; the rest are given back.
        again = [t.body for t in io.given if t.state is not CallState.DONE]
        keep = {(name, offset) for request in again for name, offset in request.blocks}
        for request in again:
            request.sent = False
        if self._arena is not None:
            for name, offset in io.lent - keep:
                self._arena.free(name, offset)
        io.lent.clear()
        if io.started_file is not None:
            io.started_file.unlink(missing_ok=True)
        unlink_owned(io.prefix)
        if self._mapper is not None:
            self._mapper.forget(io.prefix)
        self._verifier.forget(scope("from", io.ident))
        self._verifier.forget(scope("from", io.ident + b".hb"))

    def free_blocks(self, request: CallRequest) -> None:
        """Take back the arena blocks of a call that no worker holds."""
        if self._arena is not None:
            for name, offset in request.blocks:
                self._arena.free(name, offset)
        request.blocks = []

    def _close_stream(self, io: WorkerIO, kind: str) -> None:
        io.output.open[kind] = False
        self._unwatch(io.output.fds[kind])

    def _unwatch(self, fd: int) -> None:
        if self._fds.pop(fd, None) is not None:
            self._poller.unregister(fd)
