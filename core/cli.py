"""The `persistence-service` command."""

from __future__ import annotations

import argparse
import os
import sys

from core.logging import setup_logging
from core.settings import CONFIG_ENV, ConfigError, load_settings
from core.supervisor import EXIT_FATAL, Supervisor, exec_role


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="persistence-service")
    parser.add_argument("--config", help="config file (default: $PS_CONFIG, else ./config.toml)")
    parser.add_argument("command", choices=["run", "ingest", "flusher", "query"],
                        help="run: everything under one supervisor; the others: one role")
    args = parser.parse_args(argv)
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
    if args.command == "run":
        sys.exit(Supervisor(settings).run())
    exec_role(args.command, settings)


if __name__ == "__main__":
    main()
