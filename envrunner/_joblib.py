"""A joblib backend: ``joblib.Parallel`` loops (scikit-learn's among them) run in an environment.

::

    with joblib.parallel_config(backend="envrunner", env="modern"):
        Parallel(n_jobs=-1)(delayed(f)(x) for x in xs)
      joblib batches calls ─► submit(BatchedCalls) ─► one call of ``_runtime.batch.run_calls``
                              with each (function encoded, args, kwargs): the worker needs no joblib
      retrieve_result_callback(future) ─► the batch's list of results

joblib is not a dependency: this module is imported only by :func:`register_joblib` (which
users call), or by ``import envrunner`` when joblib is already imported.

May import: the standard library, joblib, ``envrunner._executor``, ``_runner``, ``_runtime``.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, register_parallel_backend

from ._executor import code_of
from ._runner import Runner, current_runner

__all__ = ["EnvrunnerBackend", "register"]

NAME = "envrunner"


class EnvrunnerBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """Runs joblib's batches in the workers of one environment of the current runner.

    Args:
        env: The environment (default: the manifest's only one).
        runner: The runner (default: the current one when the loop starts).
    """

    supports_retrieve_callback = True
    supports_timeout = True

    def __init__(
        self,
        env: str | None = None,
        runner: Runner | None = None,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **backend_kwargs: Any,
    ) -> None:
        super().__init__(
            nesting_level=nesting_level,
            inner_max_num_threads=inner_max_num_threads,
            **backend_kwargs,
        )
        self.env = env
        self._runner = runner
        self._lock = threading.Lock()
        self._pending: set[Future[Any]] = set()

    def _target(self) -> tuple[Runner, str]:
        runner = self._runner or current_runner()
        env = self.env
        if env is None:
            names = list(runner.manifest.environments)
            if len(names) != 1:
                raise ValueError(
                    f'joblib backend "envrunner" needs env=: {runner.manifest.path} declares '
                    f"{len(names)} environments ({', '.join(names)}); write "
                    f'joblib.parallel_config(backend="envrunner", env="{names[0]}")'
                )
            env = names[0]
        runner.manifest[env]  # an unknown name fails here, with a suggestion
        return runner, env

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The environment's ``workers`` for ``n_jobs=-1`` (or None); else ``n_jobs``."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or n_jobs < 0:
            runner, env = self._target()
            return runner.manifest[env].workers
        return n_jobs

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        self.parallel = parallel
        self._target()  # a wrong env fails before the loop starts
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        from ._runtime.batch import run_calls

        runner, env = self._target()
        items = getattr(func, "items", None)  # joblib's BatchedCalls: (function, args, kwargs)
        if isinstance(items, list):
            calls = [(code_of(runner, env, f), tuple(a), dict(k)) for f, a, k in items]
            future = runner._submit(env, run_calls, (calls,), {})
        else:  # another callable: sent whole (the worker may need joblib to load it)
            future = runner.submit(env, func)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Future[Any]) -> Any:
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A batch failed: cancel the batches no worker has started."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.cancel()

    def get_nested_backend(self) -> tuple[Any, None]:
        from joblib.parallel import SequentialBackend

        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None


def register() -> None:
    """Make ``backend="envrunner"`` known to joblib (idempotent)."""
    register_parallel_backend(NAME, EnvrunnerBackend)
