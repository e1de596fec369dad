"""Finding the manifest, and what to say when none is found.

``find_manifest`` decides where to look (a name given, ``$ENVRUNNER_MANIFEST``, then the
current folder and its parents); the rest explains a miss: a named file that is not there, a
named folder that holds other manifests, a search that missed the manifest beside the script
being run.

May import: the standard library and ``envrunner._runtime.errors``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ._runtime.errors import ManifestNotFoundError

MANIFEST_NAMES = ("environments.yaml", "envrunner.yaml")
_ENVIRONMENTS_KEY = re.compile(r"^environments\s*:", re.MULTILINE)
_MOST_SHOWN = 8


def missing_file(path: Path, label: str) -> ManifestNotFoundError:
    """A manifest named explicitly (argument, ``--manifest``, variable) that does not exist."""
    reason = f"file not found: {path}"
    folder = path.parent
    if not folder.is_dir():
        hint = f"the folder {folder} does not exist either; check the path"
    else:
        others = manifests_in(folder)
        if others:
            hint = f"{folder} holds {_listed(others)}: name one of them"
        else:
            hint = "check the path, or create the file"
    return ManifestNotFoundError(label, [str(path)], reason=reason, hint=hint)


def folder_without_manifest(folder: Path, label: str) -> ManifestNotFoundError:
    """A folder named as the manifest that holds neither ``environments.yaml`` nor
    ``envrunner.yaml``; lists the manifests it does hold."""
    searched = [str(folder / name) for name in MANIFEST_NAMES]
    others = manifests_in(folder)
    reason = f"{folder} is a folder without {' or '.join(MANIFEST_NAMES)}"
    if others:
        reason += f"; it holds {_listed(others)}"
        hint = f"name one of them: --manifest {_shown(others[0])}, or that path in Python"
    else:
        hint = "name a manifest file, or create environments.yaml in that folder"
    return ManifestNotFoundError(label, searched, reason=reason, hint=hint)


def nothing_found(folder: Path, searched: Sequence[str]) -> ManifestNotFoundError:
    """Discovery found no manifest in ``folder`` or above it.

    When the script being run has a manifest beside it (run from another folder), the message
    points at it.
    """
    beside = _beside_script(searched)
    if beside is None:
        return ManifestNotFoundError(str(folder), searched)
    reason = (
        f"no envrunner manifest in {folder} or its parents (the search starts at the current "
        f"folder), but your script has one beside it: {beside}"
    )
    hint = (
        f"run from {beside.parent}, name it (Runner({str(beside)!r}) in Python, --manifest on "
        f"the command line), or set ENVRUNNER_MANIFEST={beside}"
    )
    return ManifestNotFoundError(str(folder), searched, reason=reason, hint=hint)


def manifests_in(folder: Path) -> list[Path]:
    """The YAML files in ``folder`` with a top-level ``environments:`` key, sorted."""
    found: list[Path] = []
    try:
        candidates = sorted(folder.iterdir())
    except OSError:
        return found
    for candidate in candidates:
        if candidate.suffix not in (".yaml", ".yml") or not candidate.is_file():
            continue
        try:
            head = candidate.read_text(encoding="utf-8-sig", errors="replace")[:100_000]
        except OSError:
            continue
        if _ENVIRONMENTS_KEY.search(head):
            found.append(candidate)
    return found


def _beside_script(searched: Sequence[str]) -> Path | None:
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if not script:
        return None
    folder = Path(script).absolute().parent
    if Path(sys.prefix) in (folder, *folder.parents) or folder == Path(__file__).parent:
        return None  # the envrunner command (python -m envrunner), or an installed tool
    for name in MANIFEST_NAMES:
        candidate = folder / name
        if candidate.is_file() and str(candidate) not in searched:
            return candidate
    return None


def _listed(paths: Sequence[Path]) -> str:
    names = [_shown(path) for path in paths[:_MOST_SHOWN]]
    more = len(paths) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- the search

MANIFEST_ENV = "ENVRUNNER_MANIFEST"


def find_manifest(
    explicit: str | os.PathLike[str] | None = None, start: Path | None = None
) -> Path:
    """Find the manifest to use.

    Args:
        explicit: A manifest named by the caller (a file, or a folder holding one). It must
            exist: no other place is searched.
        start: The folder where the search begins (default: the current folder).

    Returns:
        The absolute path of the manifest: ``explicit`` if given, else ``$ENVRUNNER_MANIFEST``
        if set, else ``environments.yaml`` then ``envrunner.yaml`` in ``start`` or the nearest
        parent folder holding either.

    Raises:
        ManifestNotFoundError: Nothing was found; it lists every place searched.
    """
    if explicit is not None:
        return _named_manifest(Path(explicit), os.fspath(explicit))
    configured = os.environ.get(MANIFEST_ENV)
    if configured:
        return _named_manifest(Path(configured), f"{MANIFEST_ENV}={configured}")
    folder = (start if start is not None else Path.cwd()).expanduser().absolute()
    searched: list[str] = []
    for candidate_folder in (folder, *folder.parents):
        for name in MANIFEST_NAMES:
            candidate = candidate_folder / name
            if candidate.is_file():
                return candidate
            searched.append(str(candidate))
    raise nothing_found(folder, searched)


def _named_manifest(path: Path, label: str) -> Path:
    path = path.expanduser().absolute()
    if path.is_dir():
        for name in MANIFEST_NAMES:
            if (path / name).is_file():
                return path / name
        raise folder_without_manifest(path, label)
    if path.is_file():
        return path
    raise missing_file(path, label)
