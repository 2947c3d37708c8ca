"""Secrets out of anything the service shows: the effective configuration,
log lines, error texts.

Two rules, applied to nested dicts and lists of builtins (the output of
msgspec.to_builtins(settings)):
- a key named like a secret (password, passwd, passphrase, token, secret, api_key,
  credential, private_key) has its value replaced by REDACTED, whatever it is;
- a string that holds a URL with a password (scheme://user:pass@host) keeps
  everything but the password: mysql://user:***@host:3306/db.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

REDACTED = "***"
_SECRET_KEY = re.compile(r"password|passwd|passphrase|token|secret|api_?key|credential|private_?key", re.IGNORECASE)
# scheme://user:password@ anywhere in a text. The password runs to the last '@'
# of its whitespace-free token, since a password may itself hold '@', ':' or '/'.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):\S*@")


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by REDACTED."""
    parts = urlsplit(url)
    if parts.password is not None:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        url = parts._replace(netloc=f"{userinfo.partition(':')[0]}:{REDACTED}@{hostport}").geturl()
    # An unencoded '/', '?' or '#' in the password cuts urlsplit's netloc short: the text rule catches it.
    return scrub_text(url)


def scrub_text(text: str) -> str:
    """A free text (log line, error message) with every URL password replaced."""
    if "://" not in text:
        return text  # the common case, kept cheap for a log formatter
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)


def redact(value: Any, key: str = "") -> Any:
    """A copy of value (builtins: dict, list, str, numbers) with secrets replaced."""
    if key and is_secret_key(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value
