"""The broker's thread survives what one worker's answer can do to it: the call fails, saying
why, and the runner goes on serving."""

from __future__ import annotations

from pathlib import Path

import faults
import pytest
from answers import array_whose_segment_vanishes

import envrunner


def test_a_result_whose_shared_memory_is_gone_fails_its_call_not_the_runner(
    manifest_path: Path,
) -> None:
    with envrunner.Runner(manifest_path, progress=False, shm_threshold=64 * 1024) as runner:
        future = runner.submit("same", array_whose_segment_vanishes, 1_000_000)
        with pytest.raises(envrunner.DecodeError) as failed:
            future.result(timeout=60)
        message = str(failed.value)
        assert "shared memory" in message and "envrunner-" in message
        assert "shm_threshold=0" in message
        assert runner.call("same", faults.add, 1, 1) == 2  # the broker still runs
        with pytest.raises(envrunner.DecodeError, match="shm_threshold=0"):  # the direct path
            runner.call("same", array_whose_segment_vanishes, 1_000_000)
        assert runner.call("same", faults.add, 2, 2) == 4
