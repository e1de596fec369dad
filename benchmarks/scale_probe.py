"""The scale section's envrunner side, in a fresh interpreter so that its memory is its own.

Run as ``python scale_probe.py MANIFEST QUEUE_ENV CALLS ENV [ENV ...]``; prints one JSON object:

- ``rss_start_kib``: this process after ``import envrunner``;
- ``one_env_s``: the first call in one environment (a runner of its own, shut down after);
- ``all_envs_s``: one call submitted to every environment at once, until all have answered;
- ``rss_workers_kib``: this process once every environment's worker is up (the broker's cost);
- ``workers``: ``[environment, pid, idle RSS in KiB]`` for each worker;
- ``round_robin_us``: sync calls visiting the environments in turn;
- ``queue_submit_s``, ``queue_total_s``, ``rss_queued_kib``: ``CALLS`` calls submitted to
  ``QUEUE_ENV`` at once (all queued before any is waited for), then waited for.
"""

from __future__ import annotations

import json
import sys
import time

import bench_tasks
from harness import rss_kib

import envrunner


def main() -> int:
    manifest, queue_env, calls, *envs = sys.argv[1:]
    out: dict[str, object] = {"rss_start_kib": rss_kib()}
    with envrunner.Runner(manifest, progress=False) as runner:
        begin = time.perf_counter()
        runner.call(envs[0], bench_tasks.noop)
        out["one_env_s"] = time.perf_counter() - begin
    with envrunner.Runner(manifest, progress=False) as runner:
        begin = time.perf_counter()
        futures = [runner.submit(env, bench_tasks.noop) for env in envs]
        for future in futures:
            future.result()
        out["all_envs_s"] = time.perf_counter() - begin
        time.sleep(0.5)  # let the workers settle before their memory is read
        out["rss_workers_kib"] = rss_kib()
        out["workers"] = [
            [env, pid, rss_kib(pid)] for env in envs for pid in runner.worker_pids(env)
        ]
        samples = []
        for _ in range(50):
            for env in envs:
                started = time.perf_counter_ns()
                runner.call(env, bench_tasks.echo, 1)
                samples.append((time.perf_counter_ns() - started) / 1000)
        out["round_robin_us"] = samples
        echo = envrunner.task(env=queue_env)(bench_tasks.echo)
        echo(0)
        begin = time.perf_counter()
        futures = [echo.submit(i) for i in range(int(calls))]
        out["queue_submit_s"] = time.perf_counter() - begin
        out["rss_queued_kib"] = rss_kib()
        for future in futures:
            future.result()
        out["queue_total_s"] = time.perf_counter() - begin
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
