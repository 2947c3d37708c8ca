"""Operator commands: `persistence-service dead-letters list|retry|purge`,
`persistence-service spool check|salvage`, `persistence-service status` and
`persistence-service backup ...` (backup/cli.py). core/cli.py runs this module as
`python -m query.admin ...` (core imports nothing of query), with PS_CONFIG
naming the config file.

dead-letters works directly on the spool file of the configuration: no
server is needed, and it is safe while the service runs (the spool is a
SQLite WAL file; a retry takes its write lock like any append).
Exit codes: 0 done; 1 some ids were not found or could not be retried, the
spool is missing or full, or the service did not answer; 2 bad arguments."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from backup.cli import add_parser as add_backup_parser
from backup.cli import backup_command
from core.records import JSON_ENCODER
from core.settings import CONFIG_ENV, ConfigError, Settings, load_settings
from query import status_view
from query.system import DEFAULT_LIMIT, MAX_LIMIT, list_page, retry_result
from wal import Spool, SpoolError, dead_letters, salvage

EXIT_FAILED = 1
EXIT_USAGE = 2
ERROR_SHOWN_CHARS = 100


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persistence-service")
    parser.add_argument("--config", help="config file (default: $PS_CONFIG, else ./config.toml)")
    commands = parser.add_subparsers(dest="command", required=True)
    letters = commands.add_parser("dead-letters", help="records the database refused for good")
    actions = letters.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="show dead letters, oldest first")
    listing.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many (1..{MAX_LIMIT})")
    listing.add_argument("--after-id", type=int, default=0, help="start after this id (paging)")
    listing.add_argument("--json", action="store_true", help="print the API's JSON page (full payloads)")
    for name, text in (("retry", "put them back in the spool, in order"), ("purge", "delete them")):
        action = actions.add_parser(name, help=text)
        chosen = action.add_mutually_exclusive_group(required=True)
        chosen.add_argument("--ids", type=int, nargs="+", metavar="ID")
        chosen.add_argument("--all", action="store_true")
    spool = commands.add_parser("spool", help="check the spool file, or salvage a damaged one")
    spool_actions = spool.add_subparsers(dest="action", required=True)
    spool_actions.add_parser("check", help="what the service checks before it starts; exit 1 if damaged")
    salvage_cmd = spool_actions.add_parser("salvage", help="copy every intact entry into a new spool file")
    salvage_cmd.add_argument("--output", help="the new file (default: <spool>.salvaged-<time>)")
    status = commands.add_parser("status", help="a terminal view of a running service")
    status.add_argument("--url", help="base URL (default: http://<ingest.host>:<ingest.port> of the config)")
    status.add_argument("--watch", action="store_true", help=f"refresh every {status_view.REFRESH_S:g} s until Ctrl-C")
    status.add_argument("--api-key", help="when the service has auth.keys: a key with the read scope")
    add_backup_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config:
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"persistence-service: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "status":
        url = (args.url or default_url(settings)).rstrip("/")
        if args.watch:
            return status_view.watch(url, args.api_key)
        return status_view.show_once(url, args.api_key)
    if args.command == "spool":
        return spool_command(args, settings)
    if args.command == "backup":
        return backup_command(args, settings)
    return dead_letters_command(args, settings)


def spool_command(args: argparse.Namespace, settings: Settings) -> int:
    path = settings.spool.path
    if args.action == "check":
        report = salvage.check(path)
        if not report.is_ok:
            print(salvage.damaged_message(report), file=sys.stderr)
            return EXIT_FAILED
        print(f"{path}: ok, {report.entries} entries, {report.records} records waiting")
        return 0
    output = args.output or f"{path}.salvaged-{time.strftime('%Y%m%dT%H%M%S')}"
    try:
        result = salvage.salvage(path, output)
    except FileExistsError as exc:
        print(f"persistence-service: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"salvaged {result.entries_copied} entries into {result.output}")
    if result.entries_lost:
        print(f"lost {len(result.entries_lost)} unreadable entries (seq {', '.join(map(str, result.entries_lost[:20]))}"
              f"{' …' if len(result.entries_lost) > 20 else ''})")
    print(f"next: stop the service, move {path} aside (with its -wal and -shm files), move {result.output} to "
          f"{path}, start the service")
    return EXIT_FAILED if result.entries_lost else 0


def default_url(settings: Settings) -> str:
    host = settings.ingest.host
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # bound to all: ask over loopback
    return f"http://[{host}]:{settings.ingest.port}" if ":" in host else f"http://{host}:{settings.ingest.port}"


def dead_letters_command(args: argparse.Namespace, settings: Settings) -> int:
    if not Path(settings.spool.path).is_file():
        print(f"persistence-service: no spool at {settings.spool.path} (check --config)", file=sys.stderr)
        return EXIT_FAILED
    if args.action == "list" and not 1 <= args.limit <= MAX_LIMIT:
        print(f"persistence-service: --limit must be from 1 to {MAX_LIMIT}", file=sys.stderr)
        return EXIT_USAGE
    try:
        spool = Spool.open(settings.spool)
    except SpoolError as exc:
        print(f"persistence-service: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return _run_action(args, spool)
    except SpoolError as exc:
        print(f"persistence-service: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        spool.close()


def _run_action(args: argparse.Namespace, spool: Spool) -> int:
    if args.action == "list":
        return _list(spool, args.limit, args.after_id, args.json)
    ids = None if args.all else args.ids
    if args.action == "retry":
        return _retry(spool, ids)
    purged = dead_letters.purge(spool, ids)
    print(f"purged {purged} dead letter{'s' if purged != 1 else ''}")
    return EXIT_FAILED if ids is not None and purged < len(set(ids)) else 0


def _list(spool: Spool, limit: int, after_id: int, as_json: bool) -> int:
    page = list_page(spool, limit, after_id)
    if as_json:
        print(JSON_ENCODER.encode(page).decode())
        return 0
    print(f"{page.total} dead letter{'s' if page.total != 1 else ''}")
    if page.items:
        print(f"{'id':>8}  {'kind':<8} {'key':<36} {'failed at':<27} error")
    for item in page.items:
        error = item.error if len(item.error) <= ERROR_SHOWN_CHARS else item.error[:ERROR_SHOWN_CHARS] + "…"
        print(f"{item.id:>8}  {item.kind:<8} {item.record_key or '(entry)':<36} {item.failed_at:<27} {error}")
    if page.next_after_id is not None:
        print(f"more: --after-id {page.next_after_id}")
    return 0


def _retry(spool: Spool, ids: list[int] | None) -> int:
    result = retry_result(dead_letters.retry(spool, ids))
    print(f"retried {result.retried} dead letter{'s' if result.retried != 1 else ''}"
          f"{': ' + ' '.join(map(str, result.retried_ids)) if result.retried_ids else ''}")
    for skipped in result.skipped:
        print(f"skipped {skipped.id}: {skipped.reason}")
    if result.not_found:
        print(f"not found: {' '.join(map(str, result.not_found))}")
    return EXIT_FAILED if result.skipped or result.not_found else 0


if __name__ == "__main__":
    sys.exit(main())
