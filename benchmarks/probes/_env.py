"""A manifest with one environment on the caller's Python (numpy), and the probes' tasks."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def manifest() -> Path:
    """Write the manifest into a temporary folder; use a temporary home unless one is set."""
    folder = Path(tempfile.mkdtemp(prefix="er-probe-"))
    os.environ.setdefault("ENVRUNNER_HOME", str(folder / "home"))
    path = folder / "environments.yaml"
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    path.write_text(
        f'version: 1\nenvironments:\n  same:\n    python: "{minor}"\n    requirements: [numpy]\n'
    )
    sys.path.insert(0, str(HERE.parent))  # bench_tasks, importable by the workers too
    return path
