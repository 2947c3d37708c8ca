"""The `persistence-service` command."""

from __future__ import annotations

import argparse
import os
import sys

from core.logging import setup_logging
from core.settings import CONFIG_ENV, ConfigError, load_settings
from core.supervisor import EXIT_FATAL, Supervisor, exec_role

ADMIN_COMMANDS = ("dead-letters", "spool", "status", "backup")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="persistence-service")
    parser.add_argument("--config", help="config file (default: $PS_CONFIG, else ./config.toml)")
    parser.add_argument("command", choices=["run", "ingest", "flusher", "query", *ADMIN_COMMANDS],
                        help="run: everything under one supervisor; ingest|flusher|query: one role; "
                             "dead-letters list|retry|purge, spool check|salvage, status, "
                             "backup create|list|verify|restore|prune: see `COMMAND --help`")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # an admin command's own
    args = parser.parse_args(argv)
    if args.args and args.command not in ADMIN_COMMANDS:
        parser.error(f"unrecognized arguments: {' '.join(args.args)}")
    if args.config:
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"persistence-service: {exc}", file=sys.stderr)
        sys.exit(EXIT_FATAL)
    if settings.source:
        os.environ[CONFIG_ENV] = settings.source  # children read the same file
    setup_logging(settings.service.log_level)
    if args.command in ADMIN_COMMANDS:
        # Implemented in query/admin.py; core imports nothing of query, so run it as a module.
        os.execv(sys.executable, [sys.executable, "-m", "query.admin", args.command, *args.args])
    if args.command == "run":
        sys.exit(Supervisor(settings).run())
    exec_role(args.command, settings)


if __name__ == "__main__":
    main()
