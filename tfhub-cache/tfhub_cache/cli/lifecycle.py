"""``tfhub-cache ls | verify | prune``: look after a cache from a shell or a cron job.

Each handler prints a human table (or JSON with ``--json``, for scripts) and returns the exit
code: 0 when all is well, 1 when ``verify`` found damage or ``prune`` could not meet the size
budget. Errors are :class:`~tfhub_cache.errors.TFHubError`\\ s, which
``tfhub-cache`` prints as one line.
Imports neither Airflow nor TensorFlow.
"""

from __future__ import annotations

import argparse
from typing import Any

from tfhub_cache.cache import inventory
from tfhub_cache.cli import options
from tfhub_cache.cli.output import print_json, print_table
from tfhub_cache.storage import Storage, open_storage
from tfhub_cache.units import format_bytes_iec


def add_subcommands(subparsers: Any) -> None:
    """Add ``ls``, ``verify`` and ``prune`` to the ``tfhub-cache`` sub-parsers."""

    def common(p: argparse.ArgumentParser) -> None:
        options.add_cache_dir(p)
        options.add_json(p, help="print JSON instead of a table")
        options.add_quiet(p)

    p_ls = subparsers.add_parser("ls", help="list cache entries (handle, size, state, last use)")
    common(p_ls)
    p_ls.set_defaults(func=cmd_ls)

    p_verify = subparsers.add_parser("verify", help="re-hash staged files against the manifest recorded at staging")
    p_verify.add_argument("handle", nargs="?", metavar="HANDLE", help="only this model (default: every entry)")
    p_verify.add_argument(
        "--all-revisions", action="store_true", help="also verify superseded revisions (default: the current one)"
    )
    common(p_verify)
    p_verify.set_defaults(func=cmd_verify)

    p_prune = subparsers.add_parser(
        "prune", help="remove entries unused for --max-age, then least recently used ones over --max-total-bytes"
    )
    common(p_prune)
    p_prune.add_argument("--max-age", metavar="AGE", help="remove entries unused for longer, e.g. 7d, 12h, 3600s")
    p_prune.add_argument(
        "--max-total-bytes", metavar="SIZE", help="then shrink the cache to this size, e.g. 10G, 512M, 1.5GB"
    )
    p_prune.add_argument(
        "--keep", metavar="HANDLE", nargs="+", action="extend", default=[], help="never remove these models"
    )
    p_prune.add_argument(
        "--superseded-max-age",
        metavar="DURATION",
        default=inventory.DEFAULT_SUPERSEDED_MAX_AGE,
        help="remove revisions superseded longer ago than this (default: %(default)s; 0s: all superseded ones)",
    )
    p_prune.add_argument("--dry-run", action="store_true", help="only report what would be removed")
    p_prune.set_defaults(func=cmd_prune)


def _storage(args: argparse.Namespace) -> Storage:
    return open_storage(options.cache_dir(args.cache_dir))


def cmd_ls(args: argparse.Namespace) -> int:
    storage = _storage(args)
    entries = inventory.list_entries(storage, lock_timeout=options.lock_timeout())
    if args.json:
        print_json(entries)
        return 0
    rows = [
        [
            e["state"] + (" (stale)" if e["lock_stale"] else ""),
            format_bytes_iec(e["size"]),
            str(e["files"]),
            _short_time(e["last_used"]),
            _short_time(e["staged_at"]),
            _short_etag(e["etag"]),
            (e["revision"] or "-") + (f" +{len(e['revisions']) - 1}" if len(e["revisions"]) > 1 else ""),
            e["handle"] or f"? ({e['key']})",
        ]
        for e in entries
    ]
    print(f"{storage.location()}: {len(entries)} entries, {format_bytes_iec(sum(e['size'] for e in entries))}")
    if rows:
        print_table(["STATE", "SIZE", "FILES", "LAST USED", "STAGED", "ETAG", "REVISION", "HANDLE"], rows)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    storage = _storage(args)
    report = inventory.verify(storage, args.handle, all_revisions=args.all_revisions)
    if args.json:
        print_json(report)
        return 0 if report["ok"] else 1
    rows = []
    for entry in report["entries"]:
        problems = [f"{k} {len(entry[k])}" for k in ("missing", "changed", "extra") if entry[k]]
        rev = (entry.get("revision") or "-") + ("" if entry.get("current", True) else " (superseded)")
        rows.append(
            [entry["status"], str(entry["files"]), ", ".join(problems) or "-", rev, entry["handle"] or entry["key"]]
        )
    if rows:
        print_table(["STATUS", "FILES", "PROBLEMS", "REVISION", "HANDLE"], rows)
    for entry in report["entries"]:
        for kind in ("missing", "changed", "extra"):
            for rel in entry[kind]:
                print(f"  {kind}: {entry['path']}/{rel}")
    if report["ok"]:
        print("ok")
        return 0
    for advice in verify_advice(report["entries"]):
        print(advice)
    return 1


def verify_advice(entries: list[dict[str, Any]]) -> list[str]:
    """What repairs what ``verify`` found: each kind of problem has its own remedy.

    A damaged current revision is replaced by staging again; a damaged superseded revision is not
    (staging writes a new current revision and leaves it as it is), pruning removes it; leftovers of a
    dead stager are removed by ``prune``; a model that was asked for and is missing is staged.
    """
    damaged = [e for e in entries if e["status"] == "damaged"]
    current = [e for e in damaged if e.get("current", True)]
    superseded = [e for e in damaged if not e.get("current", True)]
    advice = []
    if current:
        handles = " ".join(sorted({e["handle"] or e["key"] for e in current}))
        advice.append(f"{len(current)} damaged: stage again with --refresh always: {handles}")
    if superseded:
        advice.append(
            f"{len(superseded)} superseded revisions damaged: remove them with "
            "tfhub-cache prune --superseded-max-age 0s (readers of the current revision are not affected)"
        )
    partial = [e for e in entries if e["status"] == "partial"]
    if partial:
        advice.append(f"{len(partial)} partial entries (a stager died): tfhub-cache prune removes them")
    missing = [e for e in entries if e["status"] == "not staged"]
    if missing:
        advice.append(f"not staged: {' '.join(e['handle'] for e in missing)}; stage it with tfhub-cache stage")
    return advice


def cmd_prune(args: argparse.Namespace) -> int:
    storage = _storage(args)
    result = inventory.prune(
        storage,
        max_age=args.max_age,
        max_total_bytes=args.max_total_bytes,
        keep=args.keep,
        dry_run=args.dry_run,
        lock_timeout=options.lock_timeout(),
        superseded_max_age=args.superseded_max_age,
    )
    if args.json:
        print_json(result)
        return 1 if result["over_budget"] else 0
    verb = "would remove" if result["dry_run"] else "removed"
    rows = [[verb, format_bytes_iec(r["size"]), r["handle"] or r["key"], r["reason"]] for r in result["removed"]]
    rows += [
        [verb, format_bytes_iec(r["size"]), f"{r['handle'] or r['key']} @ {r['revision']}", r["reason"]]
        for r in result["removed_revisions"]
    ]
    rows += [["kept", "-", f"{h['handle'] or h['key']} @ {h['revision']}", h["reason"]] for h in result["held"]]
    rows += [[verb, format_bytes_iec(c["size"]), c["name"], c["reason"]] for c in result["cleaned"]]
    rows += [["kept", format_bytes_iec(k["size"]), k["handle"] or k["key"], k["reason"]] for k in result["kept"]]
    if rows:
        print_table(["ACTION", "SIZE", "ENTRY", "REASON"], rows)
    print(
        f"{'Would free' if result['dry_run'] else 'Freed'} {format_bytes_iec(result['freed_bytes'])}; "
        f"{format_bytes_iec(result['total_bytes'])} remain in {storage.location()}."
    )
    if result["over_budget"]:
        print("The size budget could not be met: the rest is kept (--keep) or locked by running stagers.")
        return 1
    return 0


def _short_time(iso: str | None) -> str:
    """``2026-01-02T03:04:05+00:00`` -> ``2026-01-02 03:04`` (UTC); ``-`` when unknown."""
    return iso[:16].replace("T", " ") if iso else "-"


def _short_etag(etag: str | None) -> str:
    if not etag:
        return "-"
    return etag if len(etag) <= 20 else etag[:19] + "…"
