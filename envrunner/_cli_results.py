"""``envrunner cache`` and ``envrunner runs``: the result cache and the call records.

May import: the standard library, ``envrunner._cache``, ``envrunner._callrecords``,
``envrunner._home``, ``envrunner._manifest``, ``envrunner._runtime``.

::

    envrunner cache list [--task NAME] [--older-than AGE] [--json]
    envrunner cache show KEY [--json]
    envrunner cache clear [--task NAME] [--older-than AGE]
    envrunner runs [--task NAME] [--limit N] [--json]
    envrunner runs show ID [--json]
    envrunner runs diff A B [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_FAILED = 1
EXIT_USAGE = 2
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    """Register ``cache`` and ``runs`` on the ``envrunner`` command's sub-parsers."""
    cache = verbs.add_parser("cache", help="list, show or clear cached results")
    cache_verbs = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    listing = cache_verbs.add_parser("list", help="cached results, most recently used first")
    _filters(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_cache_list)
    show = cache_verbs.add_parser("show", help="one cached result: its key and what made it")
    show.add_argument("key", metavar="KEY", help="the key or its first characters")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_cache_show)
    clear = cache_verbs.add_parser("clear", help="remove cached results (all, or those matching)")
    _filters(clear)
    clear.set_defaults(handler=_cache_clear)

    runs = verbs.add_parser(
        "runs", parents=[common], help="the call records: list, show one, diff two"
    )
    _run_filters(runs)
    runs.set_defaults(handler=_runs_list)
    runs_verbs = runs.add_subparsers(dest="runs_command", metavar="ACTION")
    runs_list = runs_verbs.add_parser(
        "list", parents=[common], help="records, newest first (the default)"
    )
    _run_filters(runs_list)
    runs_list.set_defaults(handler=_runs_list)
    runs_show = runs_verbs.add_parser("show", parents=[common], help="one call's record")
    runs_show.add_argument("id", metavar="ID", help="the call id or its first characters")
    runs_show.add_argument("--json", action="store_true", help="print JSON")
    runs_show.set_defaults(handler=_runs_show)
    runs_diff = runs_verbs.add_parser(
        "diff", parents=[common], help="what differed between two calls"
    )
    runs_diff.add_argument("a", metavar="A")
    runs_diff.add_argument("b", metavar="B")
    runs_diff.add_argument("--json", action="store_true", help="print JSON")
    runs_diff.set_defaults(handler=_runs_diff)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", metavar="NAME", help="only this task (short or module.name)")
    parser.add_argument(
        "--older-than",
        metavar="AGE",
        type=parse_age,
        help="only results not used for AGE: 90s, 30m, 12h, 7d, 2w",
    )


def _run_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", metavar="NAME", help="only this task (short or module.name)")
    parser.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (50)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def parse_age(text: str) -> float:
    """``"7d"`` -> seconds; an argparse type."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age: write a number and a unit, e.g. 90s, 30m, 12h, 7d or 2w"
        )
    return float(match.group(1)) * _AGE_UNITS[match.group(2)]


# --------------------------------------------------------------------------- cache


def _open_cache() -> Any:
    from ._cache import ResultCache

    try:
        return ResultCache()
    except ValueError as exc:  # ENVRUNNER_CACHE_SIZE is not a size
        print(f"envrunner: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _cache_list(args: argparse.Namespace) -> int:
    cache = _open_cache()
    entries = cache.entries(task=args.task, older_than=args.older_than)
    if args.json:
        rows = [_entry_json(e) for e in entries]
        print(json.dumps({"cache": str(cache.root), "entries": rows}, indent=2))
        return 0
    if not entries:
        print(f"no cached results in {cache.root}" + _matching(args))
        return 0
    table = [("KEY", "TASK", "ENV", "SIZE", "CREATED", "LAST USED")]
    for e in entries:
        task = e.task + (" (error)" if e.error else "")
        table.append((e.key[:12], task, e.env, _size(e.size), _when(e.created), _when(e.used)))
    _print_table(table)
    total = sum(e.size for e in entries)
    print(f"\n{len(entries)} results, {_size(total)}, in {cache.root}")
    return 0


def _cache_show(args: argparse.Namespace) -> int:
    cache = _open_cache()
    found = cache.find(args.key)
    if len(found) != 1:
        what = "no cached result has" if not found else f"{len(found)} cached results have"
        print(
            f"envrunner: {what} a key starting with {args.key!r} (envrunner cache list)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    entry = found[0]
    if args.json:
        print(json.dumps(_entry_json(entry, whole=True), indent=2))
        return 0
    header = entry.header
    env = header.get("env", {})
    lines = [
        ("key", entry.key),
        ("task", entry.task),
        ("environment", f"{env.get('name')} (key {env.get('key')}, Python {env.get('python')})"),
        ("created", _when(entry.created)),
        ("last used", _when(entry.used)),
        ("size", _size(entry.size)),
        ("an exception", "yes" if entry.error else "no"),
        ("file", str(entry.path)),
    ]
    _print_pairs(lines)
    _print_section("arguments (digests)", header.get("arguments", {}))
    _print_section("code (digests)", header.get("parts", {}))
    _print_section("packages", env.get("packages", {}))
    return 0


def _cache_clear(args: argparse.Namespace) -> int:
    cache = _open_cache()
    removed = cache.clear(task=args.task, older_than=args.older_than)
    print(f"removed {removed} cached result{'s' if removed != 1 else ''} from {cache.root}")
    return 0


def _entry_json(entry: Any, whole: bool = False) -> dict[str, Any]:
    row = {
        "key": entry.key,
        "task": entry.task,
        "env": entry.env,
        "size_bytes": entry.size,
        "created": entry.created,
        "used": entry.used,
        "error": entry.error,
        "path": str(entry.path),
    }
    if whole:
        header = entry.header
        row.update(
            environment=header.get("env"),
            arguments=header.get("arguments"),
            code=header.get("parts"),
        )
    return row


# --------------------------------------------------------------------------- runs


def _open_records(args: argparse.Namespace) -> Any:
    from ._callrecords import RecordStore
    from ._home import records_path

    path = _manifest_records(args) or records_path()
    if not path.exists():
        print(
            f"no call records yet at {path}: records are opt-in (see docs/caching.md, "
            "'Call records')"
        )
        return None
    return RecordStore(path)


def _manifest_records(args: argparse.Namespace) -> Path | None:
    """The database the manifest's ``records: PATH`` names (a manifest given with
    ``--manifest`` must load; one found otherwise counts only if it does)."""
    from ._manifest import find_manifest, load_manifest
    from ._runtime.errors import EnvrunnerError

    explicit = getattr(args, "manifest", None)
    try:
        manifest = load_manifest(find_manifest(explicit))
    except EnvrunnerError:
        if explicit is not None:
            raise
        return None
    return manifest.records if isinstance(manifest.records, Path) else None


def _runs_list(args: argparse.Namespace) -> int:
    store = _open_records(args)
    if store is None:
        return 0
    try:
        records = store.list(task=args.task, limit=args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    if not records:
        print(f"no call records in {store.path}" + _matching(args))
        return 0
    table = [("ID", "TASK", "ENV", "OUTCOME", "CACHE", "STARTED", "SECONDS", "GIT")]
    for r in records:
        seconds = f"{r.ended - r.started:.3f}" if r.ended is not None else "-"
        git = "-" if r.git_commit is None else r.git_commit[:8] + ("+" if r.git_dirty else "")
        table.append((r.id[:12], r.task, r.env, r.outcome, r.cache, _when(r.started), seconds, git))
    _print_table(table)
    return 0


def _runs_show(args: argparse.Namespace) -> int:
    from ._callrecords import UnknownRecordError

    store = _open_records(args)
    if store is None:
        return EXIT_FAILED
    try:
        record = store.get(args.id)
    except UnknownRecordError as exc:
        print(f"envrunner: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    if args.json:
        print(json.dumps(record.to_json(), indent=2))
        return 0
    ended = "-" if record.ended is None else _when(record.ended, seconds=True)
    git = "no git" if record.git_commit is None else record.git_commit
    if record.git_dirty:
        git += " (uncommitted changes)"
    _print_pairs(
        [
            ("id", record.id),
            ("task", record.task),
            ("outcome", record.outcome),
            ("cache", record.cache + (f" ({record.cache_key[:12]})" if record.cache_key else "")),
            ("environment", f"{record.env} (key {record.env_key})"),
            ("python", record.python),
            ("host", record.host),
            ("project", f"{record.project} at {git}"),
            ("started", _when(record.started, seconds=True)),
            ("ended", ended),
        ]
    )
    _print_section("arguments (digests)", record.arguments)
    _print_section("code (digests)", record.code)
    _print_section("packages", record.packages)
    return 0


def _runs_diff(args: argparse.Namespace) -> int:
    from ._callrecords import UnknownRecordError, diff_records

    store = _open_records(args)
    if store is None:
        return EXIT_FAILED
    try:
        a, b = store.get(args.a), store.get(args.b)
    except UnknownRecordError as exc:
        print(f"envrunner: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    lines = diff_records(a, b)
    if args.json:
        print(json.dumps({"a": a.id, "b": b.id, "differences": lines}, indent=2))
        return 0
    print(f"{a.id[:12]} ({_when(a.started)}) -> {b.id[:12]} ({_when(b.started)}), {b.task}")
    for line in lines:
        print(f"  {line}")
    if not lines:
        print("  no difference in code, packages, arguments or where it ran")
    return 0


# --------------------------------------------------------------------------- printing


def _matching(args: argparse.Namespace) -> str:
    said = []
    if getattr(args, "task", None):
        said.append(f"task {args.task}")
    if getattr(args, "older_than", None):
        said.append(f"unused for {args.older_than:.0f}s")
    return f" matching {', '.join(said)}" if said else ""


def _when(stamp: float, seconds: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else ""), time.localtime(stamp))


def _size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _print_pairs(pairs: Sequence[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in pairs)
    for name, value in pairs:
        print(f"{name.ljust(width)}  {value}")


def _print_section(title: str, items: Any) -> None:
    if not items:
        return
    print(f"\n{title}:")
    for name, value in sorted(items.items()):
        print(f"  {name}  {value}")
