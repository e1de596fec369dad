"""A local package with an in-tree build backend the tests control (no download, no setuptools).

``make_package(folder, name)`` writes a project whose ``build_wheel``:

- appends a line to ``<folder>/builds.log`` every time it runs (how many real builds happened),
- writes ``<folder>/started`` and then, if ``<folder>/hold`` exists, waits until it is removed
  (so a test can kill a build in the middle of an install),
- writes a wheel of a module ``<name>`` holding ``VERSION``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

BACKEND = """\
import base64, hashlib, os, time, zipfile

FOLDER = {folder!r}
NAME = {name!r}
VERSION = {version!r}


def get_requires_for_build_wheel(config_settings=None):
    return []


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{{path}},sha256={{digest}},{{len(data)}}"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with open(os.path.join(FOLDER, "builds.log"), "a") as log:
        log.write(f"{{os.getpid()}}\\n")
    open(os.path.join(FOLDER, "started"), "w").close()
    deadline = time.monotonic() + 120
    while os.path.exists(os.path.join(FOLDER, "hold")) and time.monotonic() < deadline:
        time.sleep(0.05)
    dist = f"{{NAME}}-{{VERSION}}"
    files = {{
        f"{{NAME}}.py": f"VERSION = {{VERSION!r}}\\n".encode(),
        f"{{dist}}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n"
        ).encode(),
        f"{{dist}}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\\nGenerator: envrunner-tests\\nRoot-Is-Purelib: true\\n"
            b"Tag: py3-none-any\\n"
        ),
    }}
    record = [_record_line(path, data) for path, data in files.items()]
    record.append(f"{{dist}}.dist-info/RECORD,,")
    files[f"{{dist}}.dist-info/RECORD"] = ("\\n".join(record) + "\\n").encode()
    wheel = f"{{dist}}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel
"""

PYPROJECT = """\
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "{name}"
version = "{version}"
"""


def make_package(folder: Path, name: str, version: str = "1.0") -> Path:
    """Write the package into ``folder`` (created); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "backend.py").write_text(
        BACKEND.format(folder=str(folder), name=name, version=version)
    )
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(PYPROJECT.format(name=name, version=version))
    )
    return folder


def builds(folder: Path) -> int:
    """How many times the backend has built a wheel."""
    log = folder / "builds.log"
    return len(log.read_text().splitlines()) if log.exists() else 0
