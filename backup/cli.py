"""`persistence-service backup create|list|verify|restore|prune` (wired into
query/admin.py's parser). Exit codes: 0 done; 1 failed, damaged, refused or
not found; 2 bad arguments."""

from __future__ import annotations

import argparse
import sys

import msgspec

from backup.parts import BackupDamaged
from backup.restore import RestoreRefused, restore
from backup.service import BackupNotFound, BackupRunning, Backups, to_view
from core.settings import Settings
from plugins import SinkError
from plugins.blobs import BlobStoreError

EXIT_FAILED = 1


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("backup", help="consistent backups of the sink and the spool, and their restore")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("create", help="make a backup now (in this process) and print it")
    listing = actions.add_parser("list", help="backups, newest first")
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    verify = actions.add_parser("verify", help="read a backup back and check every part; exit 1 if damaged")
    verify.add_argument("backup_id")
    restoring = actions.add_parser("restore", help="rebuild the sink and the spool from a backup (service stopped)")
    restoring.add_argument("backup_id")
    restoring.add_argument("--force", action="store_true",
                           help="replace a sink or spool that holds records (MySQL keeps them as <table>__before_restore)")
    actions.add_parser("prune", help="delete backups beyond backup.keep now")


def backup_command(args: argparse.Namespace, settings: Settings) -> int:
    backups = Backups(settings)
    try:
        return _run(args, backups)
    except (BackupNotFound, BackupRunning, RestoreRefused, BackupDamaged) as exc:
        message = f"no backup {exc}" if isinstance(exc, BackupNotFound) else str(exc)
        print(f"persistence-service: {message}", file=sys.stderr)
        return EXIT_FAILED
    except (BlobStoreError, SinkError) as exc:
        print(f"persistence-service: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        backups.close()


def _run(args: argparse.Namespace, backups: Backups) -> int:
    if args.action == "create":
        manifest = backups.create("cli")
        _show(to_view(manifest))
        return 0 if manifest.status == "completed" else EXIT_FAILED
    if args.action == "list":
        views = [to_view(m) for m in backups.list_all()]
        if args.json:
            print(msgspec.json.encode({"items": views}).decode())
            return 0
        print(f"{'backup id':<24} {'status':<10} {'finished at':<28} {'bytes':>12}  records")
        for view in views:
            records = ", ".join(f"{k} {v}" for k, v in msgspec.to_builtins(view.records).items() if v)
            print(f"{view.backup_id:<24} {view.status:<10} {view.finished_at or '':<28} {view.size_bytes:>12}  "
                  f"{records}{'  ' + view.error if view.error else ''}")
        return 0
    if args.action == "verify":
        result = backups.verify(args.backup_id)
        print(f"{result.backup_id}: {result.status}, {result.checked_bytes} bytes checked")
        for problem in result.problems:
            print(f"  {problem}")
        return 0 if result.status == "ok" else EXIT_FAILED
    if args.action == "prune":
        deleted = backups.prune(backups.settings.backup.keep)
        print(f"deleted {len(deleted)} backup{'s' if len(deleted) != 1 else ''}{': ' if deleted else ''}"
              f"{' '.join(deleted)}")
        return 0
    report = restore(backups, args.backup_id, args.force, say=print)
    records = ", ".join(f"{k} {v}" for k, v in report.records.items() if v)
    print(f"restored backup {report.backup_id} into the {report.sink} sink and the spool: {records or 'no records'}")
    if report.kept_tables:
        print(f"the tables replaced are kept as {', '.join(report.kept_tables)}; drop them when no longer needed")
    return 0


def _show(view: object) -> None:
    print(msgspec.json.format(msgspec.json.encode(view)).decode())
