"""The way in: the name users install, and the pages .ci/run follows word by word (#19)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "envrunner-py"  # "envrunner" on PyPI is an unrelated package


def test_the_distribution_is_envrunner_py_and_imports_as_envrunner() -> None:
    distribution = metadata.distribution(DISTRIBUTION)
    assert distribution.metadata["Name"] == DISTRIBUTION
    scripts = {e.name: e.value for e in distribution.entry_points if e.group == "console_scripts"}
    assert scripts == {"envrunner": "envrunner._cli:main"}
    assert 'name = "envrunner-py"' in (ROOT / "pyproject.toml").read_text()


def test_every_install_line_names_the_distribution_users_can_install() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pages += sorted((ROOT / "examples" / "ci").iterdir())

    def names_envrunner(line: str) -> bool:
        command = re.search(r"\bpip install (.*)", line.split("#", maxsplit=1)[0])
        words = command.group(1).replace("`", " ").replace(",", " ").split() if command else []
        return any(re.fullmatch(r"envrunner(\[.*\])?", w.strip("'\"")) for w in words)

    found = [
        f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
        for page in pages
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if names_envrunner(line)
    ]
    assert not found, "install lines naming the unrelated 'envrunner' package:\n" + "\n".join(found)
    readme = (ROOT / "README.md").read_text()
    assert f"pip install '{DISTRIBUTION}[uv]'" in readme


def test_getting_started_marks_the_commands_ci_runs_from_an_empty_folder() -> None:
    text = (ROOT / "docs" / "getting-started.md").read_text()
    markers = re.findall(r"^<!-- ci: (run|file [^ ]+) -->\n```(\w*)$", text, re.MULTILINE)
    assert ("file environments.yaml", "yaml") in markers
    assert ("file quick.py", "python") in markers
    runs = re.findall(r"^<!-- ci: run -->\n```sh\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert runs[0].startswith("python3 -m venv .venv\n.venv/bin/pip install 'envrunner-py[uv]'")
    assert "numpy" in runs[0], "quick.py returns an array: the caller needs numpy"
    assert ".venv/bin/python quick.py\n" in runs
    assert "page docs/getting-started.md" in (ROOT / ".ci" / "run").read_text()
