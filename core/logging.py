"""Logging setup: one JSON object per line on stderr."""

from __future__ import annotations

import logging
import os
import sys
import time

import msgspec

from core.redact import scrub_text

_ENCODER = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": os.getpid(),
            "msg": scrub_text(record.getMessage()),
        }
        if record.exc_info:
            doc["exc"] = scrub_text(self.formatException(record.exc_info))
        return _ENCODER.encode(doc).decode()


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter()
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
